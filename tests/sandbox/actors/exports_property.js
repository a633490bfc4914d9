exports.process = function (context) {
    return { doubled: context.getInput("input", 0) * 2 };
};
