// graphile-worker (npm, pinned in bench/node/package.json) in its fastest documented mode: a local queue that
// fetches jobs in batches, and batched completion. Same protocol as the Python drivers:
//   node graphile_worker.cjs FIGURE --dsn DSN [--n N] [--procs P] [--seconds S] [--samples K] [--worker-dsn D]
// prints one JSON result line. Worker processes are forked children that report counts over IPC; times come
// from process.hrtime (CLOCK_MONOTONIC, shared with every process on the machine).
"use strict";

const fs = require("fs");
const { fork } = require("child_process");
const { Client } = require("pg");
const { run, makeWorkerUtils, runMigrations } = require("graphile-worker");

const CONCURRENCY = 100;
// Their performance guide: a local queue (jobs fetched and locked in batches) and batched completion.
const PRESET = { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } };
const TICKS = 100; // USER_HZ on Linux
const logger = new (require("graphile-worker").Logger)(() => (level, message) => {
  if (level === "error") process.stderr.write(`${message}\n`);
});

const now = () => Number(process.hrtime.bigint()) / 1e9;
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

function parse(argv) {
  const args = { figure: argv[0], n: 10000, procs: 1, seconds: 30, samples: 100 };
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "").replace("-", "_");
    args[key] = ["dsn", "worker_dsn"].includes(key) ? argv[i + 1] : Number(argv[i + 1]);
  }
  return args;
}

async function query(dsn, text, params) {
  const client = new Client({ connectionString: dsn });
  await client.connect();
  try {
    return (await client.query(text, params)).rows;
  } finally {
    await client.end();
  }
}

function processCpu(pid) {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, "ascii").split(")").pop().trim().split(/\s+/);
    return (Number(fields[11]) + Number(fields[12])) / TICKS;
  } catch {
    return 0;
  }
}

const PIDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";

async function serverCpuStart(dsn) {
  const before = new Map();
  for (const row of await query(dsn, PIDS)) before.set(row.pid, processCpu(row.pid));
  return async () => {
    let total = 0;
    for (const row of await query(dsn, PIDS)) total += processCpu(row.pid) - (before.get(row.pid) || 0);
    return total;
  };
}

const reset = (dsn) => query(dsn, "DELETE FROM graphile_worker._private_jobs; DELETE FROM graphile_worker._private_job_queues");
const remaining = async (dsn) => Number((await query(dsn, "SELECT count(*) AS n FROM graphile_worker._private_jobs"))[0].n);

// -- worker child ------------------------------------------------------------------------------------------

async function child(dsn) {
  let count = 0;
  let first = 0;
  let cpuStart = 0;
  const tick = () => {
    if (count === 0) {
      first = now();
      cpuStart = cpu();
    }
    count += 1;
  };
  const runner = await run({
    connectionString: dsn,
    concurrency: CONCURRENCY,
    maxPoolSize: 12,
    noHandleSignals: true,
    pollInterval: 2000,
    logger,
    preset: PRESET,
    taskList: {
      noop: async () => tick(),
      stamp: async (payload) => {
        process.send({ stamp: payload.seq, t: now() });
        tick();
      },
    },
  });
  const report = setInterval(() => process.send({ count, first }), 5);
  process.on("message", async (message) => {
    if (message === "stop") {
      clearInterval(report);
      const used = count ? cpu() - cpuStart : 0;
      process.send({ count, first, cpu: used, peak: process.resourceUsage().maxRSS / 1024 });
      await runner.stop();
      process.exit(0);
    }
  });
}

function startChildren(dsn, procs, onMessage) {
  const children = [];
  for (let i = 0; i < procs; i++) {
    const c = fork(__filename, ["__child", "--dsn", dsn], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
    c.state = { count: 0, first: 0, cpu: 0, peak: 0 };
    c.on("message", (m) => {
      Object.assign(c.state, m);
      if (onMessage) onMessage(m);
    });
    children.push(c);
  }
  return children;
}

async function stopChildren(children) {
  await Promise.all(
    children.map(
      (c) =>
        new Promise((resolve) => {
          if (c.exitCode !== null) return resolve();
          c.on("exit", resolve);
          c.send("stop");
          setTimeout(() => c.kill("SIGKILL"), 15000).unref();
        }),
    ),
  );
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// -- figures ------------------------------------------------------------------------------------------------

async function enqueueSingle(dsn, n) {
  const utils = await makeWorkerUtils({ connectionString: dsn, logger });
  await utils.addJob("noop", {});
  const stop = await serverCpuStart(dsn);
  const c0 = cpu();
  const t0 = now();
  for (let i = 0; i < n; i++) await utils.addJob("noop", {});
  const seconds = now() - t0;
  const result = { value: n / seconds, jobs: n, seconds, worker_cpu_s: cpu() - c0, pg_cpu_s: await stop() };
  await utils.release();
  return result;
}

async function addMany(utils, n) {
  for (let start = 0; start < n; start += 20000) {
    const size = Math.min(20000, n - start);
    await utils.addJobs(Array.from({ length: size }, () => ({ identifier: "noop", payload: {} })));
  }
}

async function enqueueBulk(dsn, n) {
  const utils = await makeWorkerUtils({ connectionString: dsn, logger });
  const stop = await serverCpuStart(dsn);
  const c0 = cpu();
  const t0 = now();
  await utils.addJobs(Array.from({ length: n }, () => ({ identifier: "noop", payload: {} })));
  const seconds = now() - t0;
  const result = { value: n / seconds, jobs: n, seconds, worker_cpu_s: cpu() - c0, pg_cpu_s: await stop() };
  await utils.release();
  return result;
}

async function processing(args) {
  const utils = await makeWorkerUtils({ connectionString: args.dsn, logger });
  await addMany(utils, args.n);
  await utils.release();
  await query(args.dsn, "VACUUM ANALYZE graphile_worker._private_jobs");
  const stop = await serverCpuStart(args.dsn);
  const children = startChildren(args.worker_dsn || args.dsn, args.procs);
  const total = () => children.reduce((s, c) => s + c.state.count, 0);
  const deadline = Date.now() + 90000;
  while (total() === 0) {
    if (Date.now() > deadline) throw new Error("the workers ran no job");
    await sleep(2);
  }
  const first = Math.min(...children.map((c) => c.state.first).filter((t) => t > 0));
  const limit = first + args.seconds;
  while (total() < args.n && now() < limit) await sleep(2);
  let jobs = total();
  const drained = jobs >= args.n;
  if (drained) {
    while ((await remaining(args.dsn)) > 0 && now() < limit + 30) await sleep(5);
    jobs = args.n;
  }
  const end = now();
  const pgCpu = await stop();
  await stopChildren(children);
  process.stderr.write(`bench: ${jobs} jobs in ${(end - first).toFixed(2)}s with ${args.procs} process(es)\n`);
  return {
    value: jobs / (end - first), jobs, seconds: end - first, procs: args.procs, drained,
    worker_cpu_s: children.reduce((s, c) => s + c.state.cpu, 0), pg_cpu_s: pgCpu,
    worker_peak_rss_mb: Math.max(...children.map((c) => c.state.peak)),
  };
}

function percentile(values, fraction) {
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.max(0, Math.min(sorted.length - 1, Math.round(fraction * sorted.length + 0.5) - 1));
  return sorted[index];
}

async function latency(args) {
  const stamps = new Map();
  const children = startChildren(args.dsn, 1, (m) => {
    if (m.stamp !== undefined) stamps.set(m.stamp, m.t);
  });
  const utils = await makeWorkerUtils({ connectionString: args.dsn, logger });
  const wait = async (seq) => {
    const until = Date.now() + 60000;
    while (!stamps.has(seq) && Date.now() < until) await sleep(1);
  };
  await utils.addJob("stamp", { seq: 0 });
  await wait(0);
  await sleep(20);
  const samples = [];
  for (let seq = 1; seq <= args.samples; seq++) {
    await utils.addJob("stamp", { seq });
    const committed = now();
    await wait(seq);
    if (stamps.has(seq)) samples.push((stamps.get(seq) - committed) * 1000);
    await sleep(20);
  }
  await utils.release();
  await stopChildren(children);
  return {
    latency_p50_ms: percentile(samples, 0.5), latency_p99_ms: percentile(samples, 0.99), samples: samples.length,
    mean_ms: samples.reduce((a, b) => a + b, 0) / samples.length,
  };
}

async function main() {
  const args = parse(process.argv.slice(2));
  if (args.figure === "__child") return child(args.dsn);
  let result;
  if (args.figure === "setup") {
    await runMigrations({ connectionString: args.dsn, logger });
    result = { ok: true };
  } else {
    await reset(args.dsn);
    if (args.figure === "enqueue_single") result = await enqueueSingle(args.dsn, args.n);
    else if (args.figure === "enqueue_bulk") result = await enqueueBulk(args.dsn, args.n);
    else if (args.figure === "process") result = await processing(args);
    else if (args.figure === "latency") result = await latency(args);
    else throw new Error(`unknown figure ${args.figure}`);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
