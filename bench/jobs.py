"""Run bench subprocesses a few at a time (the sweeps' shared plumbing; not a script)."""
import os
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def thread_env(workers):
    """os.environ with the CPU threads split between `workers` concurrent jobs."""
    threads = str(max(1, (os.cpu_count() or 2) // workers))
    return {**os.environ, "OMP_NUM_THREADS": threads, "RAYON_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}


def launch(cmd, log_path, env):
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log = open(log_path, "w", encoding="utf-8")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env), log


def run_all(jobs, workers, env, deadline=None):
    """Run (name, cmd, log) jobs, `workers` at a time; {name: exit code}, None for jobs never started
    (none starts after `deadline`, a time.time() value)."""
    pending, running, codes = list(jobs), {}, {name: None for name, _, _ in jobs}
    while pending or running:
        while pending and len(running) < workers and (deadline is None or time.time() < deadline):
            name, cmd, log_path = pending.pop(0)
            running[name] = (*launch(cmd, log_path, env), log_path, time.time())
            print(f"start {name}", flush=True)
        if deadline is not None and time.time() >= deadline and pending:
            print(f"deadline: {len(pending)} runs not started", flush=True)
            pending = []
        for name, (proc, log, log_path, t0) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                codes[name] = proc.returncode
                del running[name]
                print(f"{'done' if proc.returncode == 0 else 'FAILED'} {name} [{time.time() - t0:.0f}s]", flush=True)
                if proc.returncode:
                    with open(log_path, encoding="utf-8") as f:
                        print("".join(f.readlines()[-15:]), flush=True)
        time.sleep(0.5)
    return codes


def read_json(path):
    """The JSON at path, or None when it is missing (a run that failed or never started)."""
    import json
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
