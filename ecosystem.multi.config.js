// pm2 config for several hotkeys on one box: ONE cascade service (Ray Serve) and N thin miners.
//   pm2 start ecosystem.multi.config.js      (docs/serving.md; needs the [serve] extra: pip install -e '.[serve]')
// Each miner has its own hotkey, axon port and health port and sends decoded images to the service;
// the models are loaded once, in the service. Settings come from .env (see .env.example) plus:
//   MINER_HOTKEYS        comma list of hotkey names of WALLET_NAME (default: default)
//   MINER_AXON_PORT      axon port of the first miner; the next ones use +1, +2, ... (default 8091)
//   HEALTH_PORT          health port of the first miner, +1, +2, ... (default and when 0: 9100)
//   SERVE_PROFILE        profile the service runs (default: MINER_PROFILE or configs/lite-cpu.yaml)
//   SERVE_PORT           service HTTP port on 127.0.0.1 (default 8000)
//   SERVE_RAY_ADDRESS    join a Ray cluster (`ray start --head` on this box: auto) instead of a private Ray
//   ENGINE_REMOTE_FALLBACK  profile each miner runs locally while the service is down (default: none)
const fs = require("fs");
const path = require("path");

function loadEnv(file) {
  const env = {};
  if (!fs.existsSync(file)) return env;
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    const m = line.match(/^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*([^#]*?)\s*(#.*)?$/);
    if (m && m[2] !== "") env[m[1]] = m[2].replace(/^["']|["']$/g, "");
  }
  return env;
}

const root = __dirname;
const env = loadEnv(path.join(root, ".env"));
const python = path.join(root, ".venv/bin/python");
const profile = env.MINER_PROFILE || "configs/lite-cpu.yaml";
const servePort = env.SERVE_PORT || "8000";
const hotkeys = (env.MINER_HOTKEYS || env.WALLET_HOTKEY || "default").split(",").map((h) => h.trim()).filter(Boolean);
const axonBase = parseInt(env.MINER_AXON_PORT || "8091", 10);
const healthBase = parseInt(env.HEALTH_PORT || "0", 10) || 9100; // 0 (off for a lone miner) -> 9100

const serveArgs = ["-m", "natix_miner.serve", "--profile", env.SERVE_PROFILE || profile, "--port", servePort];
if (env.SERVE_RAY_ADDRESS) serveArgs.push("--address", env.SERVE_RAY_ADDRESS);
if (env.ALLOW_RESTRICTED_LICENCES === "1") serveArgs.push("--allow-restricted");

const common = {
  interpreter: "none",
  cwd: root,
  autorestart: true,
  min_uptime: "60s",
  max_restarts: 50,
  exp_backoff_restart_delay: 2000,
  kill_timeout: 15000,
  merge_logs: true,
  time: false, // loguru timestamps every line (no double timestamps)
  stop_exit_codes: [78], // natix_miner.neuron.config.CONFIG_EXIT_CODE: no restart loop for a configuration error
};

const apps = [
  {
    ...common,
    name: env.PM2_SERVE_NAME || "natix-serve",
    script: python,
    args: serveArgs.join(" "),
    env: { ...env, PYTHONUNBUFFERED: "1" },
    max_memory_restart: env.PM2_SERVE_MAX_MEMORY || "64G",
  },
];

hotkeys.forEach((hotkey, i) => {
  const args = [
    path.join(root, "neurons/miner.py"),
    "--netuid", env.NETUID || "72",
    "--subtensor.network", env.SUBTENSOR_NETWORK || "finney",
    "--wallet.name", env.WALLET_NAME || "default",
    "--wallet.hotkey", hotkey,
    "--axon.port", String(axonBase + i),
    "--health.port", String(healthBase + i),
    "--profile", profile, // the miner reads only deadline, cache and epsilon from it
    "--engine.remote", `http://127.0.0.1:${servePort}`,
    "--neuron.name", `miner-${hotkey}`,
  ];
  if (env.ENGINE_REMOTE_FALLBACK) args.push("--engine.remote_fallback", env.ENGINE_REMOTE_FALLBACK);
  // the miners start at once: until the service is up they answer the fallback and /health says degraded
  apps.push({
    ...common,
    name: `${env.PM2_NAME || "natix-miner"}-${hotkey}`,
    script: python,
    args: args.join(" "),
    env: { ...env, PYTHONUNBUFFERED: "1", WALLET_HOTKEY: hotkey },
    max_memory_restart: env.PM2_MAX_MEMORY || "4G",
  });
});

module.exports = { apps };
