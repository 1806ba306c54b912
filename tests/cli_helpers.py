"Running `crosscoder-diff` from tests: in this process (status and everything printed), or as a subprocess killed mid-run."
import contextlib, io, os, signal, subprocess, sys, time
from crosscoder_nb.cli import main

ONE_THREAD = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}   # two runs then do the same float operations

def fault_rng():
    "A random source for kill points, and its seed (FAULT_SEED=S reproduces a run; by default a new seed each run)."
    import random
    seed = int(os.environ.get('FAULT_SEED', time.time_ns() % 2**32))
    return random.Random(seed), seed

def later(cond, delay: float):
    "A `kill_when` that is true `delay` seconds after `cond` first was: a kill point between two observable events."
    since = []
    def when() -> bool:
        if not since and cond(): since.append(time.time())
        return bool(since) and time.time() - since[0] >= delay
    return when

def run(*argv) -> tuple[int, str]:
    "`crosscoder-diff ARGV` in this process: its exit status and everything it printed."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    return code, out.getvalue() + err.getvalue()

def cli_process(*argv, kill_when=None, timeout: float = 600) -> str:
    """`python -m crosscoder_nb.cli ARGV` in a subprocess on one thread; its output. Without `kill_when` it must succeed;
    with it, it is SIGKILLed as soon as `kill_when()` is true, and must have been killed mid-run."""
    p = subprocess.Popen([sys.executable, '-m', 'crosscoder_nb.cli', *map(str, argv)], env=ONE_THREAD,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_when is not None:
        deadline = time.time() + timeout
        while time.time() < deadline and p.poll() is None:
            if kill_when(): p.send_signal(signal.SIGKILL); break
            time.sleep(0.002)
    log, _ = p.communicate(timeout=timeout)
    if kill_when is None: assert p.returncode == 0, log
    else: assert p.returncode == -signal.SIGKILL, f'the run was not killed mid-run (status {p.returncode}): {log[-2000:]}'
    return log
