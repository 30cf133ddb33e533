// A small client of Firefox's Marionette protocol, for the browser tests that run Debian's
// Firefox ESR (/usr/bin/firefox-esr) headless: no geckodriver, no npm package.
//
// launchFirefox() starts Firefox with a fresh temporary profile (FIREFOX_PREFS in its user.js:
// fake camera and microphone allowed without a prompt, loopback ICE candidates, no first-run
// pages, updates, telemetry or other outbound connections), connects to its Marionette port and
// opens a WebDriver session. quit() ends the browser and removes the profile.
//
// The protocol: one TCP connection; every packet is `LENGTH:JSON`, LENGTH being the JSON's size
// in UTF-8 bytes. Firefox first sends {applicationType, marionetteProtocol: 3}; then each
// command is [0, id, name, params] and its answer [1, id, error, result], `error` being null or
// {error, message, stacktrace}.

import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export const FIREFOX = process.env.FIREFOX ?? '/usr/bin/firefox-esr';

/** WebDriver's key for an element reference in arguments and results. */
const ELEMENT_KEY = 'element-6066-11e4-a52e-4f735466cecf';

/** How long Firefox gets to open its Marionette port. */
const START_TIMEOUT_MS = 60_000;
/** How long one command may take beyond its own timeout (a script's, a page load's). */
const COMMAND_GRACE_MS = 30_000;

/**
 * The profile's preferences (user.js). `marionette.port` 0 lets the kernel choose a free port;
 * Firefox writes the one it got to MarionetteActivePort in the profile, which launchFirefox reads.
 */
export const FIREFOX_PREFS = {
  'marionette.port': 0,
  // Media for tests: fake devices, allowed without asking, playing without a gesture.
  'media.navigator.streams.fake': true,
  'permissions.default.camera': 1,
  'permissions.default.microphone': 1,
  // Not media.navigator.permission.disabled: without a real permission Firefox gathers ICE
  // candidates on the default route's address only, and a loopback-only namespace has none.
  'media.autoplay.default': 0,
  'media.autoplay.blocking_policy': 0,
  'media.block-autoplay-until-in-foreground': false,
  // ICE on loopback (all the test namespace has), with plain host candidates (no mDNS names).
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'media.peerconnection.ice.default_address_only': false,
  // Page console output goes to Firefox's stdout, so the test's log of it has the page's errors.
  'devtools.console.stdout.content': true,
  // No first-run or what's-new pages, no default-browser question, no session restore.
  'browser.shell.checkDefaultBrowser': false,
  'browser.startup.page': 0,
  'browser.startup.homepage': 'about:blank',
  'browser.startup.homepage_override.mstone': 'ignore',
  'startup.homepage_welcome_url': 'about:blank',
  'startup.homepage_welcome_url.additional': '',
  'browser.aboutwelcome.enabled': false,
  'trailhead.firstrun.didSeeAboutWelcome': true,
  'browser.newtabpage.enabled': false,
  'browser.sessionstore.resume_from_crash': false,
  'browser.tabs.warnOnClose': false,
  'browser.warnOnQuit': false,
  'toolkit.startup.max_resumed_crashes': -1,
  // No telemetry, studies or data reporting.
  'datareporting.policy.dataSubmissionEnabled': false,
  'datareporting.policy.dataSubmissionPolicyBypassNotification': true,
  'datareporting.healthreport.uploadEnabled': false,
  'datareporting.usage.uploadEnabled': false,
  'toolkit.telemetry.enabled': false,
  'toolkit.telemetry.unified': false,
  'toolkit.telemetry.archive.enabled': false,
  'toolkit.telemetry.server': '',
  'app.normandy.enabled': false,
  'app.normandy.api_url': '',
  'app.shield.optoutstudies.enabled': false,
  'nimbus.rollouts.enabled': false,
  'browser.ping-centre.telemetry': false,
  'browser.newtabpage.activity-stream.feeds.telemetry': false,
  'browser.newtabpage.activity-stream.telemetry': false,
  'browser.discovery.enabled': false,
  'browser.backup.enabled': false,
  // No updates of the browser, its add-ons, its plugins (GMP) or its search engines.
  'app.update.enabled': false,
  'app.update.auto': false,
  'app.update.checkInstallTime': false,
  'app.update.disabledForTesting': true,
  'app.update.staging.enabled': false,
  'extensions.update.enabled': false,
  'extensions.update.autoUpdateDefault': false,
  'extensions.systemAddon.update.enabled': false,
  'extensions.getAddons.cache.enabled': false,
  'extensions.blocklist.enabled': false,
  'extensions.autoDisableScopes': 0,
  'media.gmp-manager.updateEnabled': false,
  'media.gmp-manager.url': '',
  'browser.search.update': false,
  'browser.region.network.url': '',
  'browser.region.update.enabled': false,
  'services.settings.server': 'data:,',
  'geo.provider.network.url': '',
  // No connectivity checks, captive-portal probes, safe-browsing lists or speculative connections.
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
  'network.dns.disablePrefetch': true,
  'network.prefetch-next': false,
  'network.http.speculative-parallel-limit': 0,
  'browser.safebrowsing.malware.enabled': false,
  'browser.safebrowsing.phishing.enabled': false,
  'browser.safebrowsing.blockedURIs.enabled': false,
  'browser.safebrowsing.downloads.enabled': false,
  'browser.safebrowsing.downloads.remote.enabled': false,
  'browser.safebrowsing.provider.google4.updateURL': '',
  'browser.safebrowsing.provider.google.updateURL': '',
  'browser.safebrowsing.provider.mozilla.updateURL': '',
  'privacy.trackingprotection.enabled': false,
  'network.trr.mode': 5,
  'security.OCSP.enabled': 0,
  'security.remote_settings.crlite_filters.enabled': false,
  'identity.fxaccounts.enabled': false,
  'services.sync.enabled': false,
};

/** An error Firefox answered a command with: `.error` is WebDriver's code ("javascript error", ...). */
export class MarionetteError extends Error {
  constructor(command, { error, message, stacktrace }) {
    super(`${command}: ${error}: ${message}`);
    this.name = 'MarionetteError';
    this.command = command;
    this.error = error;
    this.stacktrace = stacktrace;
  }
}

/** The protocol over one TCP connection: send(name, params) resolves with the command's result. */
class MarionetteConnection {
  constructor(socket) {
    this.socket = socket;
    this.nextId = 1;
    this.pending = new Map();
    this.closed = null;
    this.buffer = Buffer.alloc(0);
    let sayHello;
    this.hello = new Promise((resolve, reject) => { sayHello = { resolve, reject }; });
    this.onPacket = (packet) => {
      this.onPacket = (p) => this.answer(p);
      sayHello.resolve(packet);
    };
    socket.on('data', (chunk) => this.receive(chunk));
    const fail = (why) => {
      if (this.closed) return;
      this.closed = why;
      const err = new Error(`the Marionette connection ${why}`);
      sayHello.reject(err);
      for (const { reject, name } of this.pending.values()) reject(new Error(`${name}: ${err.message}`));
      this.pending.clear();
    };
    socket.on('error', (e) => fail(`failed: ${e.message}`));
    socket.on('close', () => fail('closed'));
  }

  /** Connects to 127.0.0.1:`port` and reads Firefox's hello. */
  static async open(port) {
    const socket = await new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => { s.off('error', reject); resolve(s); });
      s.once('error', reject);
    });
    const connection = new MarionetteConnection(socket);
    const hello = await withTimeout(connection.hello, 10_000, 'Firefox\'s Marionette hello');
    if (hello.marionetteProtocol !== 3) {
      socket.destroy();
      throw new Error(`unexpected Marionette hello: ${JSON.stringify(hello)}`);
    }
    return connection;
  }

  receive(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const colon = this.buffer.indexOf(':');
      if (colon < 0) return;
      const length = Number(this.buffer.subarray(0, colon).toString('latin1'));
      if (!Number.isInteger(length) || colon > 12) {
        this.socket.destroy(new Error(`bad Marionette packet header "${this.buffer.subarray(0, 20).toString('latin1')}"`));
        return;
      }
      if (this.buffer.length < colon + 1 + length) return;
      const body = this.buffer.subarray(colon + 1, colon + 1 + length).toString('utf8');
      this.buffer = this.buffer.subarray(colon + 1 + length);
      let packet;
      try {
        packet = JSON.parse(body);
      } catch (e) {
        this.socket.destroy(new Error(`bad Marionette packet (${e.message}): ${body.slice(0, 200)}`));
        return;
      }
      this.onPacket(packet);
    }
  }

  answer(packet) {
    const [type, id, error, result] = Array.isArray(packet) ? packet : [];
    const waiting = this.pending.get(id);
    if (type !== 1 || !waiting) return; // Not an answer to anything of ours.
    this.pending.delete(id);
    if (error) waiting.reject(new MarionetteError(waiting.name, error));
    else waiting.resolve(result);
  }

  /** Sends command `name`; rejects with a MarionetteError, or if no answer comes in `timeoutMs`. */
  send(name, params = {}, { timeoutMs = COMMAND_GRACE_MS } = {}) {
    if (this.closed) return Promise.reject(new Error(`${name}: the Marionette connection ${this.closed}`));
    const id = this.nextId++;
    const body = Buffer.from(JSON.stringify([0, id, name, params]), 'utf8');
    const answered = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject, name }));
    this.socket.write(Buffer.concat([Buffer.from(`${body.length}:`, 'latin1'), body]));
    return withTimeout(answered, timeoutMs, `Firefox's answer to ${name}`).finally(() => this.pending.delete(id));
  }

  close() {
    this.socket.destroy();
  }
}

/**
 * One Firefox process with its own profile and one WebDriver session (one window). Made by
 * launchFirefox().
 */
export class Firefox {
  constructor({ child, profileDir, logPath, output, exit }) {
    this.child = child;
    this.profileDir = profileDir;
    this.logPath = logPath;
    this.output = output;
    this.exit = exit;
    this.exited = null;
    exit.then((how) => { this.exited = how; });
    this.connection = null;
    this.capabilities = null;
    this.scriptTimeoutMs = 30_000;
    this.pageLoadTimeoutMs = 30_000;
  }

  /** Firefox's version, from the session's capabilities. */
  get version() {
    return this.capabilities?.browserVersion;
  }

  command(name, params, options) {
    return this.connection.send(name, params, options);
  }

  /** Opens the WebDriver session (launchFirefox does it). */
  async newSession(capabilities = {}) {
    const result = await this.command('WebDriver:NewSession', {
      capabilities: { alwaysMatch: { acceptInsecureCerts: true, ...capabilities } },
    });
    this.capabilities = result.capabilities;
    await this.command('WebDriver:SetTimeouts', { script: this.scriptTimeoutMs, pageLoad: this.pageLoadTimeoutMs, implicit: 0 });
    return result;
  }

  /** Sets the window's outer size (screenshots are of the viewport inside it). */
  setWindowSize(width, height) {
    return this.command('WebDriver:SetWindowRect', { width, height });
  }

  /** Loads `url` in the window and waits for its load event. */
  navigate(url) {
    return this.command('WebDriver:Navigate', { url }, { timeoutMs: this.pageLoadTimeoutMs + COMMAND_GRACE_MS });
  }

  /**
   * Runs `script` in the page, as the body of a function whose arguments are `args` (read them
   * as `arguments[i]`), and resolves with what it returns (JSON-like values; a promise is awaited).
   * A function may be given instead of a body: it is called with `args`.
   */
  async execute(script, args = []) {
    const result = await this.command('WebDriver:ExecuteScript', { script: asBody(script), args },
      { timeoutMs: this.scriptTimeoutMs + COMMAND_GRACE_MS });
    return result.value;
  }

  /**
   * Like execute(), but the script ends by calling the callback Marionette adds as its last
   * argument (`arguments[arguments.length - 1]`) with its result.
   */
  async executeAsync(script, args = []) {
    const result = await this.command('WebDriver:ExecuteAsyncScript', { script: asBody(script), args },
      { timeoutMs: this.scriptTimeoutMs + COMMAND_GRACE_MS });
    return result.value;
  }

  /**
   * Runs `script` (as execute() does) every `intervalMs` until it returns something truthy, and
   * resolves with that; rejects after `timeoutMs`, naming `what` and the last value seen.
   */
  async waitFor(script, { args = [], timeoutMs = 30_000, intervalMs = 100, what = 'a condition in the page' } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = await this.execute(script, args);
      if (value) return value;
      if (Date.now() > deadline) {
        throw new Error(`timed out after ${timeoutMs / 1000} s waiting in Firefox for ${what} (last: ${JSON.stringify(value)})`);
      }
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  }

  /** The element reference of the first element matching `selector` (a no-such-element error if none). */
  async find(selector) {
    const result = await this.command('WebDriver:FindElement', { using: 'css selector', value: selector });
    return result.value ?? result;
  }

  /** Clicks the element matching `selector` as a person would (it must be visible and enabled). */
  async click(selector) {
    const element = await this.find(selector);
    await this.command('WebDriver:ElementClick', { id: element[ELEMENT_KEY] });
  }

  /** Focuses the element matching `selector` and types `text` into it with key events. */
  async type(selector, text, { clear = false } = {}) {
    const element = await this.find(selector);
    if (clear) await this.command('WebDriver:ElementClear', { id: element[ELEMENT_KEY] });
    await this.command('WebDriver:ElementSendKeys', { id: element[ELEMENT_KEY], text });
  }

  /** A PNG of the window's viewport, base64. */
  async screenshot() {
    const result = await this.command('WebDriver:TakeScreenshot', { full: false, hash: false });
    return result.value;
  }

  /** Writes a PNG of the viewport to `file` (making its folder) and resolves with the path. */
  async screenshotTo(file) {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, Buffer.from(await this.screenshot(), 'base64'));
    return file;
  }

  /** The last `lines` lines Firefox printed (the page's console output among them). */
  outputTail(lines = 40) {
    return this.output().split('\n').slice(-lines).join('\n');
  }

  /**
   * Ends Firefox (asks it to quit, then kills it if it has not within a few seconds) and removes
   * its profile. Safe to call more than once.
   */
  async quit() {
    if (!this.quitting) {
      this.quitting = (async () => {
        if (!this.exited && this.connection && !this.connection.closed) {
          await this.command('Marionette:Quit', { flags: ['eForceQuit'] }, { timeoutMs: 5_000 }).catch(() => {});
        }
        this.connection?.close();
        if (!this.exited) {
          const gone = await withTimeout(this.exit, 5_000, 'Firefox to exit').then(() => true, () => false);
          if (!gone) {
            this.child.kill('SIGKILL');
            await this.exit;
          }
        }
        rmSync(this.profileDir, { recursive: true, force: true });
      })();
    }
    return this.quitting;
  }
}

/**
 * Starts Firefox ESR headless with a fresh profile (FIREFOX_PREFS, then `prefs`), connects to
 * Marionette and opens a session with a `width`x`height` window. Firefox's output goes to
 * `logPath` (if given). Rejects, with Firefox's output, if it exits or opens no port in time.
 */
export async function launchFirefox({ executablePath = FIREFOX, prefs = {}, logPath, width = 1280, height = 800 } = {}) {
  if (!existsSync(executablePath)) {
    throw new Error(`no Firefox at ${executablePath} (apt-get install firefox-esr, or set FIREFOX)`);
  }
  const profileDir = mkdtempSync(path.join(os.tmpdir(), 'sfu-firefox-'));
  const allPrefs = { ...FIREFOX_PREFS, ...prefs };
  writeFileSync(path.join(profileDir, 'user.js'),
    Object.entries(allPrefs).map(([name, value]) => `user_pref(${JSON.stringify(name)}, ${JSON.stringify(value)});\n`).join(''));
  let logFile = null;
  if (logPath) {
    mkdirSync(path.dirname(logPath), { recursive: true });
    logFile = createWriteStream(logPath);
  }
  const child = spawn(executablePath, ['--marionette', '--headless', '--no-remote', '--profile', profileDir], {
    env: {
      ...process.env,
      MOZ_HEADLESS: '1',
      MOZ_CRASHREPORTER_DISABLE: '1',
      // Caches in the profile's folder, removed with it.
      XDG_CACHE_HOME: path.join(profileDir, 'cache'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const onData = (chunk) => {
    logFile?.write(chunk);
    // The start and the latest output are what a failure report needs; keep memory bounded.
    output += chunk.toString();
    if (output.length > 1_000_000) output = output.slice(0, 100_000) + '\n[...]\n' + output.slice(-500_000);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const exit = new Promise((resolve) => {
    child.on('error', (e) => resolve({ error: e.message }));
    child.on('exit', (code, signal) => resolve({ code, signal }));
  }).then((how) => {
    logFile?.end();
    return how;
  });
  const firefox = new Firefox({ child, profileDir, logPath, output: () => output, exit });
  try {
    firefox.connection = await connectWhenReady(firefox, allPrefs['marionette.port']);
    await firefox.newSession();
    await firefox.setWindowSize(width, height);
  } catch (err) {
    await firefox.quit();
    err.message += `\nFirefox's output${logPath ? ` (all of it in ${logPath})` : ''}:\n${firefox.outputTail()}`;
    throw err;
  }
  return firefox;
}

/**
 * Waits for Firefox's Marionette port (the one in MarionetteActivePort when the pref is 0) and
 * connects, retrying while Firefox starts.
 */
async function connectWhenReady(firefox, configuredPort) {
  const started = Date.now();
  const portFile = path.join(firefox.profileDir, 'MarionetteActivePort');
  let lastError = null;
  for (;;) {
    if (firefox.exited) throw new Error(`Firefox exited while starting (${JSON.stringify(firefox.exited)})`);
    if (Date.now() - started > START_TIMEOUT_MS) {
      throw new Error(`Firefox opened no Marionette port within ${START_TIMEOUT_MS / 1000} s${lastError ? ` (last: ${lastError.message})` : ''}`);
    }
    let port = configuredPort || null;
    if (!port && existsSync(portFile)) port = Number(readFileSync(portFile, 'utf8').trim()) || null;
    if (port) {
      try {
        return await MarionetteConnection.open(port);
      } catch (e) {
        lastError = e;
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A script body from a body or a function (called with the command's arguments). */
function asBody(script) {
  return typeof script === 'function' ? `return (${script}).apply(null, arguments);` : script;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`no ${what} within ${ms / 1000} s`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}
