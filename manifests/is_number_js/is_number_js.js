const isNumber = require('is-number');

async function process(context) {
    await context.sendOutput('is_number', isNumber(context.getInput('value')));
    return { status: 'completed' };
}

module.exports = { process };
