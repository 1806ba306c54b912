"Headless Chromium for the page tests: Debian's chromium + chromedriver through selenium, with console and network logs."
import json, os, shutil
from pathlib import Path
import pytest

CHROMIUM, DRIVER = '/usr/bin/chromium', shutil.which('chromedriver') or '/usr/bin/chromedriver'

def chrome():
    "A headless driver; skips the test when chromium is missing, unless CROSSCODER_REQUIRE_BROWSER=1 (CI) makes that a failure."
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
    try: from selenium import webdriver
    except ImportError: missing.append('selenium (pip install selenium)')
    if missing:
        msg = f"browser test needs {missing}: apt install chromium chromium-driver (or `make browser`)"
        if os.environ.get('CROSSCODER_REQUIRE_BROWSER') == '1': pytest.fail(msg)
        pytest.skip(msg)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options(); opts.binary_location = CHROMIUM
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'): opts.add_argument(a)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL', 'performance': 'ALL'})
    return webdriver.Chrome(service=Service(DRIVER), options=opts)

def console_errors(driver) -> list:
    return [e for e in driver.get_log('browser') if e['level'] in ('SEVERE', 'ERROR')]

def requested_urls(driver) -> list[str]:
    "Every URL the pages loaded so far requested (from the performance log)."
    msgs = (json.loads(e['message'])['message'] for e in driver.get_log('performance'))
    return [m['params']['request']['url'] for m in msgs if m['method'] == 'Network.requestWillBeSent']
