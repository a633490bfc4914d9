// Spin every core with worker_threads, forever. Must end -32005.
// Before spinning forever it reports the CPU it got over half a second (CPU time /
// wall time, all threads together) so the test can see the cpus quota at work.
const { Worker } = require("worker_threads");
const proc = require("process");

const THREADS = 3;

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    for (let i = 0; i < THREADS; i++) new Worker("for (;;) {}", { eval: true });
    const cpu0 = proc.cpuUsage();
    const wall0 = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 500));
    const cpu = proc.cpuUsage(cpu0);
    const ratio = (cpu.user + cpu.system) / 1000 / (Date.now() - wall0);
    await context.sendOutput("output", { cpu_ratio: Math.round(ratio * 1000) / 1000,
                                         threads: THREADS });
    for (;;) { /* spin here too */ }
}

module.exports = { process };
