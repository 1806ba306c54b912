"""Time `make test` (every notebook and the test suite, offline) on this machine and record it for README.md.

    python bench/make_test.py

Writes crosscoder_nb/assets/results/make-test.json: wall seconds, the pytest summary line and the machine."""
import json, os, platform, re, subprocess, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu() -> str:
    for line in Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []:
        if line.startswith('model name'): return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


t0 = time.time()
r = subprocess.run(['make', 'test'], cwd=ROOT, capture_output=True, text=True)
seconds = time.time() - t0
summary = ([l for l in r.stdout.splitlines() if re.search(r'\d+ (passed|failed)', l)] or ['(no summary)'])[-1]
data = {'seconds': round(seconds, 1), 'returncode': r.returncode, 'summary': summary.strip('= '),
        'machine': f'{cpu()}, {os.cpu_count()} cores'}
(ROOT / 'crosscoder_nb' / 'assets' / 'results' / 'make-test.json').write_text(json.dumps(data, indent=1) + '\n')
print(data)
