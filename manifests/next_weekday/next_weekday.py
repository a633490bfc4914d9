from dateutil import parser, relativedelta


async def process(context):
    day = parser.isoparse(context.get_input("date")).date()
    weekday = getattr(relativedelta, context.get_input("weekday", "MO"))
    found = day + relativedelta.relativedelta(weekday=weekday)
    await context.send_output("date", found.isoformat())
    return {"from": day.isoformat()}
