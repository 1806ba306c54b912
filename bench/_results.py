"""Where the bench scripts put their figures: crosscoder_nb/assets/results/NAME.json (shipped with the package,
so that an installed package shows the notebooks' tables) and NAME.md, and the markdown into README.md between
the markers `<!-- NAME:start -->` and `<!-- NAME:end -->`, so that README quotes figures only from generated files."""
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def publish(name: str, md: str, data: dict, readme: bool = True):
    "Write the results files, print the table, and (with `readme`) replace README.md's block for `name`."
    out = ROOT / 'crosscoder_nb' / 'assets' / 'results'; out.mkdir(parents=True, exist_ok=True)
    (out / f'{name}.json').write_text(json.dumps(data, indent=1))
    (out / f'{name}.md').write_text(md)
    print(md)
    if not readme: return
    path = ROOT / 'README.md'
    text, pat = path.read_text(), re.compile(rf'(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)', re.S)
    if pat.search(text): path.write_text(pat.sub(lambda m: m.group(1) + md + m.group(2), text)); print('README.md updated')
    else: print(f'README.md has no {name} markers: not updated')
