"""Where the bench scripts put their figures: crosscoder_nb/assets/results/NAME.json (shipped with the package,
so that an installed package shows the notebooks' tables) and NAME.md, and the markdown into the page of docs/ that holds
the markers `<!-- NAME:start -->` and `<!-- NAME:end -->`, so that the pages quote figures only from generated files
(README.md is generated from nbs/index.ipynb, which reads these files)."""
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def publish(name: str, md: str, data: dict, readme: bool = True):
    "Write the results files, print the table, and (with `readme`) replace the block for `name` in the page of docs/ that has it."
    out = ROOT / 'crosscoder_nb' / 'assets' / 'results'; out.mkdir(parents=True, exist_ok=True)
    (out / f'{name}.json').write_text(json.dumps(data, indent=1))
    (out / f'{name}.md').write_text(md)
    print(md)
    if not readme: return
    pat = re.compile(rf'(<!-- {re.escape(name)}:start -->\n).*?(<!-- {re.escape(name)}:end -->)', re.S)
    for path in sorted((ROOT / 'docs').glob('*.md')):   # README.md is generated from nbs/index.ipynb: no blocks there
        text = path.read_text()
        if pat.search(text):
            path.write_text(pat.sub(lambda m: m.group(1) + md + m.group(2), text)); print(f'{path.name} updated')
            print('README.md quotes nbs/index.ipynb: run `make readme` if it reads this file'); return
    print(f'no page under docs/ has {name} markers: none updated')
