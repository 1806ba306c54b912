"""Rebuild the organisms' English corpus from Debian packages (a maintainer's tool, not run by users).

The corpus ships inside the package (`crosscoder_nb/assets/corpus/*.txt.xz`), so users never need this.
To rebuild it on a Debian machine:

    apt-get install bible-kjv python3-doc python-django-doc python-sqlalchemy-doc sphinx-doc jargon-text
    python tools/build_corpus.py crosscoder_nb/assets/corpus

Each output file holds one paragraph per line (newlines inside a paragraph become spaces).
Sources and licences are listed in `crosscoder_nb/assets/corpus/SOURCES.md`.
"""
import gzip, html.parser, lzma, pathlib, re, subprocess, sys

MIN_WORDS = 6

class _Paragraphs(html.parser.HTMLParser):
    "Collect the text of <p>, <li> and <dd> elements, skipping code, navigation and scripts."
    BLOCK, SKIP = {'p', 'li', 'dd'}, {'pre', 'script', 'style', 'nav', 'head', 'footer'}
    def __init__(self):
        super().__init__(); self.paras, self.cur, self.depth, self.skip = [], [], 0, 0
    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP: self.skip += 1
        if tag in self.BLOCK:
            self.flush(); self.depth += 1
    def handle_endtag(self, tag):
        if tag in self.SKIP: self.skip = max(0, self.skip - 1)
        if tag in self.BLOCK:
            self.flush(); self.depth = max(0, self.depth - 1)
    def handle_data(self, data):
        if self.depth and not self.skip: self.cur.append(data)
    def flush(self):
        if self.cur: self.paras.append(' '.join(''.join(self.cur).split()))
        self.cur = []

def _is_prose(p):
    words = p.split()
    if len(words) < MIN_WORDS: return False
    letters = sum(c.isalpha() or c.isspace() for c in p)
    return letters / len(p) > 0.85

def html_paragraphs(root, exclude=()):
    out = []
    for f in sorted(pathlib.Path(root).rglob('*.html')):
        rel = str(f.relative_to(root))
        if any(rel.startswith(e) for e in exclude): continue
        p = _Paragraphs(); p.feed(f.read_text(errors='ignore')); p.flush()
        out += [x for x in p.paras if _is_prose(x)]
    return out

def kjv_paragraphs():
    "One paragraph per chapter of the King James Bible, verse numbers removed."
    text = subprocess.check_output(['bible', '-f', 'Gen1:1-Rev22:21']).decode()
    chapters, key = {}, None
    for line in text.splitlines():
        m = re.match(r'^(\w+?)(\d+):(\d+)\s+(.*)$', line)
        if m:
            key = (m.group(1), m.group(2)); chapters.setdefault(key, []).append(m.group(4))
        elif key and line.strip(): chapters[key][-1] += ' ' + line.strip()
    return [' '.join(v) for v in chapters.values()]

def jargon_paragraphs():
    text = gzip.open('/usr/share/doc/jargon-text/jargon.txt.gz', 'rt', errors='ignore').read()
    paras = [' '.join(p.split()) for p in re.split(r'\n\s*\n', text)]
    return [p for p in paras if _is_prose(p)]

SOURCES = {
    'kjv': kjv_paragraphs,
    'python_docs': lambda: html_paragraphs('/usr/share/doc/python3.11/html',
                                           exclude=('_static', 'genindex', 'py-modindex', 'search', 'whatsnew/changelog')),
    'django_docs': lambda: html_paragraphs('/usr/share/doc/python-django-doc/html',
                                           exclude=('_modules', 'releases', 'genindex', 'py-modindex', 'search', '_static')),
    'sqlalchemy_docs': lambda: html_paragraphs('/usr/share/doc/python-sqlalchemy-doc/html',
                                               exclude=('_static', 'genindex', 'search', 'changelog', '_modules')),
    'sphinx_docs': lambda: html_paragraphs('/usr/share/doc/sphinx-doc/html',
                                           exclude=('_static', 'genindex', 'search', 'changes', '_modules')),
    'jargon': jargon_paragraphs,
}

if __name__ == '__main__':
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else 'crosscoder_nb/assets/corpus')
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in SOURCES.items():
        paras = list(dict.fromkeys(fn()))  # drop exact duplicates, keep order
        data = '\n'.join(paras).encode()
        (out / f'{name}.txt.xz').write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        print(f'{name}: {len(paras)} paragraphs, {len(data)/1e6:.1f} MB')
