"""Take the README's screenshot of the playground (docs/playground.png) in Debian's chromium.

Serves a checkpoint on 127.0.0.1, types a prompt, waits for the streamed
completion, hovers a token so its alternatives show, and saves the page.

    python benchmarks/playground_screenshot.py --checkpoint shakespeare=runs/sr --prompt "ROMEO:"

docs/playground.png was taken from a `cpu-speedrun-188` run on tinyshakespeare
(val loss 1.87), 300 tokens, temperature 0.8, top-k 40, seed 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serving import Server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="[ID=]RUN to serve")
    ap.add_argument("--prompt", default="ROMEO:")
    ap.add_argument("--max-tokens", default="300")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--hover", type=int, default=25, help="index of the token to hover")
    ap.add_argument("--out", default=str(ROOT / "docs/playground.png"))
    args = ap.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,860"):
        options.add_argument(a)
    with Server("--checkpoint", args.checkpoint) as server:
        browser = webdriver.Chrome(
            service=Service(executable_path="/usr/bin/chromedriver"), options=options
        )
        try:
            browser.get(server.url + "/")
            wait = WebDriverWait(browser, 30)
            wait.until(lambda b: b.find_element(By.ID, "status").text == "ready")
            for field, value in (("seed", args.seed), ("max_tokens", args.max_tokens)):
                box = browser.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            browser.find_element(By.ID, "prompt").send_keys(args.prompt)
            browser.find_element(By.ID, "send").click()
            wait.until(
                lambda b: (
                    b.find_element(By.ID, "prompt").is_enabled()
                    and b.find_elements(By.CSS_SELECTOR, "#transcript .tok")
                )
            )
            time.sleep(1.0)  # the last attention refresh
            tokens = browser.find_elements(By.CSS_SELECTOR, "#transcript .tok")
            ActionChains(browser).move_to_element(
                tokens[min(len(tokens) - 1, args.hover)]
            ).perform()
            time.sleep(0.3)
            browser.save_screenshot(args.out)
            print(f"wrote {args.out}: {len(tokens)} tokens")
        finally:
            browser.quit()


if __name__ == "__main__":
    main()
