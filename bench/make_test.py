"""Time `make test` (every notebook and the test suite, offline) on this machine and record it for README.md.

    python bench/make_test.py                       # runs `make test` itself
    python bench/make_test.py --record SECONDS LOG RC   # records a run made elsewhere (.ci/run times its own)

Writes crosscoder_nb/assets/results/make-test.json: wall seconds, the pytest summary line and the machine; only a
passing run is recorded."""
import json, os, platform, re, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / 'crosscoder_nb' / 'assets' / 'results' / 'make-test.json'


def cpu() -> str:
    for line in Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []:
        if line.startswith('model name'): return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def record(seconds: float, log: str, returncode: int) -> dict:
    "Write make-test.json for a passing run; return what was (or would have been) written."
    summary = ([l for l in log.splitlines() if re.search(r'\d+ (passed|failed)', l)] or ['(no summary)'])[-1]
    data = {'seconds': round(seconds, 1), 'returncode': returncode, 'summary': summary.strip('= '),
            'machine': f'{cpu()}, {os.cpu_count()} cores'}
    if returncode == 0: OUT.write_text(json.dumps(data, indent=1) + '\n')
    print('make-test:', data, '' if returncode == 0 else '(failed: not recorded)')
    return data


if __name__ == '__main__':
    if sys.argv[1:2] == ['--record']:
        secs, log, rc = sys.argv[2:5]
        record(float(secs), Path(log).read_text(errors='replace'), int(rc))
    else:
        t0 = time.time()
        r = subprocess.run(['make', 'test'], cwd=ROOT, capture_output=True, text=True)
        record(time.time() - t0, r.stdout, r.returncode)
        sys.exit(r.returncode)
