"""Adds up an order (see schemas/order.json) and sends the total."""


async def process(context):
    order = context.get_input("order")
    amount = sum(line["quantity"] * line["unit_price"] for line in order["lines"])
    total = {"order_id": order["id"], "amount": amount,
             "currency": order.get("currency", "EUR")}
    await context.send_output("total", total)
    return {"status": "completed"}
