"""Take the docs' screenshot of the playground (docs/playground.png) in Debian's chromium.

Serves a checkpoint on 127.0.0.1, sends a chat message (or, with --prompt, a
completion prompt), waits for the streamed reply, shows the attention head
asked for with a row of its map outlined, hovers a generated token so its
alternatives show, and saves the page. `make screenshots` runs it on the
README's fine-tuned run:

    python benchmarks/playground_screenshot.py --checkpoint runs/reverse --chat "Reverse: tower"

With `--head auto` (the default) it shows the head whose reply rows give the
most weight to the user's message: after the README's short SFT on `reverse`,
a reversal head, the outlined row of the reply's second letter (`--row 1`)
reading the word's mirrored letter.
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
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from serving import Server  # noqa: E402

ASSISTANT = "<|assistant|>"
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _reply_rows(tokens: list[str]) -> tuple[int, int]:
    """The reply's rows in the map (after the last `<|assistant|>`) and where the user's message starts."""
    start = max(i for i, t in enumerate(tokens) if t == ASSISTANT) + 1
    user = max((i for i, t in enumerate(tokens[:start]) if t == "<|user|>"), default=-1) + 1
    return start, user


def _weight_on_message(attn: dict) -> float:
    """How much the reply's rows read the user's message, on average (0 to 1)."""
    tokens, weights = attn["tokens"], attn["weights"]
    start, user = _reply_rows(tokens)
    rows = [weights[t] for t in range(start - 1, len(tokens))]
    return sum(sum(row[user : start - 2]) for row in rows) / max(1, len(rows))


def _show_head(browser, wait, layer: int, head: int) -> dict:
    """Select a layer and a head on the page; the attention it then shows."""
    Select(browser.find_element(By.ID, "layer")).select_by_value(str(layer))
    Select(browser.find_element(By.ID, "head")).select_by_value(str(head))
    wait.until(
        lambda b: b.execute_script(
            "return state.attn && !state.attnPending && state.attn.layer === arguments[0] "
            "&& state.attn.head === arguments[1]",
            layer,
            head,
        )
    )
    return browser.execute_script("return state.attn")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="[ID=]RUN to serve")
    text = ap.add_mutually_exclusive_group()
    text.add_argument("--chat", help="a chat message to send (a chat model)")
    text.add_argument("--prompt", help="a completion prompt (a base model)")
    ap.add_argument("--max-tokens", default="300")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--temperature", default="0", help="0: greedy (default), as the docs show it")
    ap.add_argument("--layer", default="auto", help="attention layer to show, or auto")
    ap.add_argument("--head", default="auto", help="attention head to show, or auto (see above)")
    ap.add_argument(
        "--row",
        type=int,
        default=1,
        help="the map's row to outline: that of reply token N (from 0)",
    )
    ap.add_argument(
        "--tip",
        type=int,
        default=1,
        help="generated token N (from 0) to hover: its alternatives show",
    )
    ap.add_argument("--width", type=int, default=1400, help="window width in px")
    ap.add_argument("--height", type=int, default=900, help="window height in px")
    ap.add_argument("--out", default=str(ROOT / "docs/playground.png"))
    args = ap.parse_args()
    if not args.chat and not args.prompt:
        ap.error("give --chat TEXT or --prompt TEXT")
    run = Path(args.checkpoint.partition("=")[2] or args.checkpoint)
    if not run.exists():
        ap.error(
            f"{run} does not exist: `make screenshots` serves the README's runs/reverse "
            "(make demo, then the README's `folio tasks make` and `folio sft` on reverse)"
        )
    missing = [p for p in (CHROMIUM, DRIVER) if not Path(p).exists()]
    if missing:
        ap.error(f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(a)
    options.add_argument(f"--window-size={args.width},{args.height}")
    with Server("--checkpoint", args.checkpoint, timeout=300) as server:
        browser = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
        try:
            browser.get(server.url + "/")
            browser.execute_script("localStorage.clear()")
            browser.get(server.url + "/")
            wait = WebDriverWait(browser, 120)
            wait.until(lambda b: b.find_element(By.ID, "status").text == "ready")
            Select(browser.find_element(By.ID, "mode")).select_by_value(
                "chat" if args.chat else "completion"
            )
            fields = (("seed", args.seed), ("max_tokens", args.max_tokens))
            for field, value in (*fields, ("temperature", args.temperature)):
                box = browser.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            browser.find_element(By.ID, "prompt").send_keys(args.chat or args.prompt)
            browser.find_element(By.ID, "send").click()
            wait.until(lambda b: not b.execute_script("return state.busy"))
            wait.until(lambda b: b.execute_script("return state.attn && !state.attnPending"))
            model = browser.execute_script("return currentModel().folio")
            layers = range(model["n_layer"]) if args.layer == "auto" else [int(args.layer)]
            heads = range(model["n_head"]) if args.head == "auto" else [int(args.head)]
            if args.chat and (len(layers) > 1 or len(heads) > 1):
                scores = {
                    (L, h): _weight_on_message(_show_head(browser, wait, L, h))
                    for L in layers
                    for h in heads
                }
                layer, head = max(scores, key=scores.get)
                print(
                    f"layer {layer}, head {head}: the reply's rows give {scores[layer, head]:.2f} to the message"
                )
            else:
                layer, head = layers[0], heads[0]
            attn = _show_head(browser, wait, layer, head)
            # The row is outlined as hovering it would; the mouse then hovers a token.
            start = _reply_rows(attn["tokens"])[0] if args.chat else 0
            row = min(len(attn["tokens"]) - 1, start + args.row)
            browser.execute_script("state.query = arguments[0]; drawAttention()", row)
            tokens = browser.find_elements(By.CSS_SELECTOR, "#transcript .tok")
            ActionChains(browser).move_to_element(tokens[min(len(tokens) - 1, args.tip)]).perform()
            time.sleep(0.3)
            browser.save_screenshot(args.out)
            print(
                f"wrote {args.out}: layer {layer}, head {head}, row {row}, token {args.tip} hovered"
            )
        finally:
            browser.quit()


if __name__ == "__main__":
    main()
