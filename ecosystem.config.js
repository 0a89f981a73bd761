// pm2 config: `cp .env.example .env`, edit it, then `pm2 start ecosystem.config.js`.
// Every setting comes from .env (README "Environment variables" lists them all): this file passes no flags, the
// miner reads the same .env itself (and so does scripts/doctor.py), so a value set there reaches both. Extra
// flags go in MINER_EXTRA_ARGS (no edit of a tracked file). Restarts on crash with back-off and above the memory
// limit, but NOT after a configuration error (exit code 78: a typo would fail the same way 50 times).
// Logs: PM2_LOG_DIR (default ./logs) holds natix-miner.out.log / .err.log; rotate them with
// `pm2 install pm2-logrotate`. pm2 adds no timestamp (`time: false`): every miner line carries loguru's own.
const fs = require("fs");
const path = require("path");

function loadEnv(file) {
  // same rules as natix_miner.neuron.config.load_env_file: comments, optional `export`, quotes stripped
  const env = {};
  if (!fs.existsSync(file)) return env;
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    const m = line.match(/^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^#]*?))\s*(#.*)?$/);
    if (!m) continue;
    const value = m[2] !== undefined ? m[2] : m[3] !== undefined ? m[3] : m[4];
    if (value !== "") env[m[1]] = value;
  }
  return env;
}

const CONFIG_EXIT_CODE = 78; // natix_miner.neuron.config.CONFIG_EXIT_CODE
const root = __dirname;
const envFile = process.env.MINER_ENV_FILE || path.join(root, ".env");
const env = loadEnv(envFile);
const logDir = env.PM2_LOG_DIR || path.join(root, "logs");
const name = env.PM2_NAME || "natix-miner";

module.exports = {
  apps: [
    {
      name,
      script: "neurons/miner.py",
      interpreter: env.PM2_PYTHON || path.join(root, ".venv/bin/python"),
      cwd: root,
      args: "", // flags: .env and MINER_EXTRA_ARGS, read by the miner itself
      env: { ...env, MINER_ENV_FILE: envFile, PYTHONUNBUFFERED: "1" },
      autorestart: true,
      stop_exit_codes: [CONFIG_EXIT_CODE],
      min_uptime: "60s",
      max_restarts: 50,
      exp_backoff_restart_delay: 2000,
      max_memory_restart: env.PM2_MAX_MEMORY || "24G",
      kill_timeout: 10000, // SIGTERM first; the miner stops within a few seconds
      out_file: path.join(logDir, `${name}.out.log`),
      error_file: path.join(logDir, `${name}.err.log`),
      merge_logs: true,
      time: false, // loguru already timestamps every line
    },
  ],
};
