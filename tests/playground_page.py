"""The browser and the servers of the playground tests (tests/test_playground*.py).

Debian's chromium, driven by Selenium and chromium-driver. Nothing downloads a
browser: `make install` installs chromium and chromium-driver with apt-get when
they are missing (as root, as in CI). A test skips only where neither is
possible (not root and chromium missing), and says so.

Starting chromium and a server costs seconds, so a test process starts one
browser and two servers (in its own threads) at the first test that asks, and
every playground test it runs shares them; they stop when the run ends. Each
test starts on a page whose storage and browser log are emptied, at the width it
asks for, so no test sees what another left behind.

The keyless server serves "tiny" (a completion model, block size 16) and two
chat models whose `<|end|>` is made likely: "chat" ends a reply after a few
tokens, "quiet" at once. The other, with the API key KEY, serves one chat model
of block size 32.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from serving import TEXT, AppServer, random_gpt

from folio.sample.engine import Engine
from folio.serve.app import ServedModel, create_app
from folio.tokenizers import CharTokenizer
from folio.tokenizers.chat import END, with_chat_tokens

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "playground-clé"  # not ASCII: the page must send it as UTF-8
BLOCK = 16  # the block size of "tiny"
PNG = b"\x89PNG\r\n\x1a\n"
POLL = 0.05  # seconds between a wait's checks: Selenium's default half second adds up


def waiting(browser, timeout: float = 30):
    """A wait on `browser` that checks its condition every POLL seconds."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=POLL)


_shared: dict = {}  # what this process has started: "browser", "open", "keyed"


def browser_or_skip(width: int = 1400, height: int = 900):
    """Debian's chromium, headless, through chromium-driver; the test skips (or fails, as root)
    with the reason where they are missing."""
    missing = [p for p in (CHROMIUM, DRIVER) if not (os.path.exists(p) or shutil.which(p))]
    if missing:
        if os.geteuid() == 0:
            pytest.fail(
                f"{', '.join(missing)} missing although running as root: `make install` "
                "installs chromium and chromium-driver (apt-get)"
            )
        pytest.skip(
            f"{', '.join(missing)} missing and not root: apt-get install chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)


def ending_gpt(tok, end_logit: float):
    """A random chat GPT whose `<|end|>` logit is about `end_logit` above zero at every position.

    ln_f's output becomes mostly its bias (ones); the tied row of `<|end|>` is set to
    read that bias as `end_logit`, the other rows stay random (logits of about +-1).
    """
    model = random_gpt(tok.vocab_size, 64)
    end = tok.special_token_id(END)
    with torch.no_grad():
        ln_f = model.transformer.ln_f
        ln_f.weight.mul_(0.5)
        ln_f.bias.fill_(1.0)
        model.lm_head.weight[end] = end_logit * ln_f.bias / ln_f.bias.dot(ln_f.bias)
    return model


def _open_app():
    tok = CharTokenizer.from_text(TEXT)
    ctok = with_chat_tokens(tok)
    models = [
        ServedModel("tiny", Engine(random_gpt(tok.vocab_size, BLOCK)), tok),
        ServedModel("chat", Engine(ending_gpt(ctok, 3.0)), ctok),  # p(<|end|>) about 0.2 a step
        ServedModel("quiet", Engine(ending_gpt(ctok, 12.0)), ctok),  # about 0.9995
    ]
    # As `folio serve` sets it up on 127.0.0.1 without a key.
    return create_app(models, loopback_only=True)


def _keyed_app():
    ctok = with_chat_tokens(CharTokenizer.from_text(TEXT))
    return create_app(
        [ServedModel("chat", Engine(random_gpt(ctok.vocab_size, 32)), ctok)], api_key=KEY
    )


def _started(config: pytest.Config, name: str, start):
    """What `start()` gave the first time this process asked for `name`, stopped at the end."""
    if name not in _shared:
        thing, stop = start()
        config.add_cleanup(stop)
        _shared[name] = thing
    return _shared[name]


def _browser():
    browser = browser_or_skip()
    return browser, browser.quit


def _server(make_app):
    def start():
        server = AppServer(make_app()).__enter__()
        return server, lambda: server.__exit__(None, None, None)

    return start


def server_url(config: pytest.Config, keyed: bool = False) -> str:
    """The URL of this process's keyless server, or of the one with the API key KEY."""
    if keyed:
        return _started(config, "keyed", _server(_keyed_app)).url
    return _started(config, "open", _server(_open_app)).url


def shared_browser(config: pytest.Config):
    """This process's browser."""
    return _started(config, "browser", _browser)


def fresh_browser(config: pytest.Config, url: str, width: int = 1400):
    """This process's browser at `width`, with the storage of `url`'s page and its log emptied."""
    browser = shared_browser(config)
    browser.set_window_size(width, 900)
    browser.get(url + "/")
    browser.execute_script("localStorage.clear(); sessionStorage.clear()")
    browser.get_log("browser")  # what earlier tests logged is theirs
    mouse_to_corner(browser)
    return browser


def mouse_to_corner(browser) -> None:
    """The mouse to the window's top left corner, where a new browser has it.

    Left over the page where an earlier test clicked, it would hover whatever the next
    page lays out beneath it, and a hover redraws the attention map.
    """
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(browser)
    actions.pointer_action.move_to_location(0, 0)
    actions.perform()


class Playground:
    """One browser on one server's page, driven as a person would: type, click, hover.

    The playground test modules drive the shared browser through this; `open` starts
    each test on a fresh page.
    """

    def __init__(self, browser, url: str) -> None:
        self.browser, self.url = browser, url
        self.wait = waiting(browser)

    def open(self, width: int, model: str | None = None, *, fresh: bool = True) -> None:
        """The page at this window width, its storage emptied unless `fresh` is False."""
        from selenium.webdriver.support.ui import Select

        self.browser.set_window_size(width, 900)
        self.browser.get(self.url + "/")
        if fresh:
            self.js("localStorage.clear()")
            self.browser.get(self.url + "/")
        mouse_to_corner(self.browser)
        self.wait.until(lambda b: self.find("status").text == "ready")
        if model is not None:
            Select(self.find("model")).select_by_value(model)

    def find(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.browser.find_element(By.ID, element_id)

    def all(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.browser.find_elements(By.CSS_SELECTOR, css)

    def js(self, script: str, *args):
        return self.browser.execute_script(script, *args)

    def fill(self, element_id: str, value: str) -> None:
        box = self.find(element_id)
        box.clear()
        box.send_keys(value)

    def idle(self) -> None:
        """Wait until the page has finished a request (the reply, or its error)."""
        self.wait.until(
            lambda b: not self.js("return state.busy") and self.find("send").is_enabled()
        )

    def click(self, element) -> None:
        element.click()
        self.idle()

    def say(self, text: str) -> None:
        self.fill("prompt", text)
        self.click(self.find("send"))

    def history(self) -> list[dict]:
        return self.js("return chatHistory()")

    def hover(self, element, dx: int | None = None, dy: int | None = None) -> None:
        """The mouse over `element`, at (dx, dy) from its centre when given."""
        from selenium.webdriver.common.action_chains import ActionChains

        chain = ActionChains(self.browser)
        if dx is None:
            chain.move_to_element(element)
        else:
            chain.move_to_element_with_offset(element, dx, dy)
        chain.perform()

    def fits(self) -> bool:
        """No sideways scrolling: the page is no wider than the window."""
        return self.js("return document.documentElement.scrollWidth <= window.innerWidth")

    def scroll_to(self, element) -> None:
        """Scroll the page so that `element` is in the middle of the window."""
        self.js("arguments[0].scrollIntoView({block: 'center'})", element)

    def screenshot(self, path, show=None) -> None:
        """Save the window as `path`, scrolled first so that the element `show` is in view."""
        if show is not None:
            self.scroll_to(show)
        save_png(self.browser, path)


def save_png(browser, path) -> None:
    """One screenshot of the window, checked to be a PNG and saved as `path`."""
    png = browser.get_screenshot_as_png()
    assert png[:8] == PNG
    with open(path, "wb") as f:
        f.write(png)


def playground(config: pytest.Config) -> Playground:
    """The shared browser on the keyless server's page; `Playground.open` empties its storage."""
    return Playground(shared_browser(config), server_url(config))
