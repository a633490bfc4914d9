function check(value) {
  throw new TypeError(`bad input ${value}`);
}

async function process(context) {
  return check(context.getInput('input', 1));
}
