// pm2 config: `pm2 start ecosystem.config.js` (after `cp .env.example .env` and editing it).
// Restarts on crash with back-off, restarts above the memory limit, keeps logs rotating
// (install once: `pm2 install pm2-logrotate`).
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
const args = [
  "--netuid", env.NETUID || "72",
  "--subtensor.network", env.SUBTENSOR_NETWORK || "finney",
  "--axon.port", env.MINER_AXON_PORT || "8091",
  "--profile", env.MINER_PROFILE || "configs/lite-cpu.yaml",
];
if (env.WALLET_NAME) args.push("--wallet.name", env.WALLET_NAME);
if (env.WALLET_HOTKEY) args.push("--wallet.hotkey", env.WALLET_HOTKEY);

module.exports = {
  apps: [
    {
      name: env.PM2_NAME || "natix-miner",
      script: "neurons/miner.py",
      interpreter: path.join(root, ".venv/bin/python"),
      cwd: root,
      args: args.join(" "),
      env: { ...env, PYTHONUNBUFFERED: "1" },
      autorestart: true,
      min_uptime: "60s",
      max_restarts: 50,
      exp_backoff_restart_delay: 2000,
      max_memory_restart: env.PM2_MAX_MEMORY || "24G",
      kill_timeout: 10000, // SIGTERM first; the miner stops within a few seconds
      merge_logs: true,
      time: true,
    },
  ],
};
