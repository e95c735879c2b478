// Drives Debian's Firefox ESR over WebDriver BiDi (puppeteer-core) for the Python tests
// (tests/signaling/firefox_support.py). One JSON command per stdin line, one JSON reply per
// stdout line: {"id", "op", ...} -> {"id", "ok": true, "value"} or {"id", "ok": false, "error"}.
//   open {url, init}            a new page (its own browser context; `init`: a script run
//                               before the page's own) -> page number
//   eval {page, fn, arg}        `fn` is a function's source; its awaited result comes back
//   click {page, selector}      a real click (trusted input) on the first match
//   fill {page, selector, text} type into an input
//   close_page {page}           close a page (and its context)
//   errors / logs               uncaught page errors / console messages since the last call
//   close                       end the browser and this process
// Firefox on loopback needs media.peerconnection.ice.loopback; it then pairs only through TURN
// (see docs/browser.md). Fake camera/microphone, no permission prompts.

import readline from "node:readline";
import puppeteer from "puppeteer-core";

const executablePath = process.env.PARLEY_FIREFOX || "/usr/bin/firefox-esr";
// headless unless given an X display (tests/signaling/firefox_support.py starts an Xvfb for
// screen sharing: headless Firefox has no screen to capture)

const browser = await puppeteer.launch({
  browser: "firefox",
  executablePath,
  headless: !process.env.DISPLAY,
  protocolTimeout: 30_000,
  extraPrefsFirefox: {
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
    // camera and microphone allowed: without a granted permission Firefox gathers only the
    // "default" address (of the default route), which a loopback-only network does not have
    "permissions.default.camera": 1,
    "permissions.default.microphone": 1,
    "media.peerconnection.ice.loopback": true,
    ...(process.env.PARLEY_FIREFOX_PREFS ? JSON.parse(process.env.PARLEY_FIREFOX_PREFS) : {}),
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    // the fake screen for getDisplayMedia without a picker
    "media.getdisplaymedia.enabled": true,
    "media.navigator.video.default_fps": 15,
    // keep background pages running at full speed (several pages in one browser)
    "dom.min_background_timeout_value": 4,
    "browser.shell.checkDefaultBrowser": false,
  },
});

const pages = [];
const errors = [];
const logs = [];

async function handle(cmd) {
  switch (cmd.op) {
    case "open": {
      const context = await browser.createBrowserContext();
      const page = await context.newPage();
      page.on("pageerror", (err) => errors.push(`${cmd.url}: ${err && err.message ? err.message : err}`));
      page.on("console", (m) => logs.push(`${pages.length}: ${m.type()}: ${m.text()}`.slice(0, 2000)));
      page.setDefaultTimeout(20_000);
      if (cmd.init) await page.evaluateOnNewDocument(cmd.init);
      await page.goto(cmd.url);
      pages.push(page);
      return pages.length - 1;
    }
    case "eval": {
      const page = pages[cmd.page];
      // eslint-disable-next-line no-new-func
      return await page.evaluate(`(${cmd.fn})(${JSON.stringify(cmd.arg ?? null)})`);
    }
    case "click":
      await pages[cmd.page].click(cmd.selector);
      return null;
    case "fill": {
      const page = pages[cmd.page];
      await page.click(cmd.selector, { clickCount: 3 });
      await page.type(cmd.selector, cmd.text);
      return null;
    }
    case "close_page":
      await pages[cmd.page].browserContext().close();
      return null;
    case "errors":
      return errors;
    case "logs":
      return logs.splice(0);
    case "close":
      await browser.close();
      return null;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = readline.createInterface({ input: process.stdin });
process.stdout.write(JSON.stringify({ id: 0, ok: true, value: await browser.version() }) + "\n");
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch {
    continue;
  }
  try {
    const value = await handle(cmd);
    process.stdout.write(JSON.stringify({ id: cmd.id, ok: true, value: value ?? null }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ id: cmd.id, ok: false, error: String(err && err.stack ? err.stack : err) }) + "\n");
  }
  if (cmd.op === "close") break;
}
await browser.close().catch(() => {});
process.exit(0);
