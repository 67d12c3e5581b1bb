// The page in a real headless Chromium against the real `chatrun serve`: what a person sees
// and does in the first minutes. The test starts both and stops both.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import {
  assistants,
  chatIdOf,
  idle,
  lastAssistant,
  launchBrowser,
  partialReply,
  plain,
  replyText,
  results,
  send,
  sleep,
  startServer,
  storedChat,
  storedText,
  users,
} from './harness.mjs';

// Slow replies where a test acts mid-reply; fast ones where it only needs finished replies.
let server;
let fast;
let browser;

before(async () => {
  [server, fast, browser] = await Promise.all([startServer({ tokensPerSec: 12 }), startServer({ tokensPerSec: 80 }), launchBrowser()]);
});

after(async () => {
  await browser?.close();
  await server?.close();
  await fast?.close();
});

const desktop = { viewport: { width: 1280, height: 800 } };

describe('the chat page', () => {
  it('lands ready to type: the first message creates the chat, its URL and its title', async () => {
    const context = await browser.newContext(desktop);
    const page = await context.newPage();
    await page.goto(server.base);
    const box = page.getByRole('textbox', { name: 'Message' });
    await box.waitFor();
    assert.equal(await box.evaluate((el) => el === document.activeElement), true, 'the message box has the focus');
    assert.equal(await page.getByRole('button', { name: 'Send' }).isDisabled(), true, 'nothing to send yet');
    await page.keyboard.type('Tell me about tide pools and the animals that live there');
    await page.keyboard.press('Enter');
    await page.waitForURL(/\/c\/[A-Za-z0-9_-]+$/);
    await users(page).first().waitFor();
    assert.equal(await replyText(users(page).first()), 'Tell me about tide pools and the animals that live there');
    await partialReply(page, 3);
    assert.ok(await page.getByRole('button', { name: 'Stop' }).isVisible(), 'Send became Stop while the reply streams');
    assert.equal(await lastAssistant(page).getByRole('button', { name: 'Copy message' }).count(), 0, 'no copy button while streaming');
    assert.equal(await page.getByRole('button', { name: 'Send' }).count(), 0);
    const early = (await replyText(lastAssistant(page))).length;
    await partialReply(page, 10);
    assert.ok((await replyText(lastAssistant(page))).length > early, 'the reply grows while it streams');
    await idle(page);
    const stored = await storedChat(page, chatIdOf(page));
    assert.equal(stored.body.messages.length, 2);
    assert.equal(plain(await replyText(lastAssistant(page))), plain(storedText(stored.body.messages[1])));
    // The sidebar, the header and the tab carry the chat's title.
    const link = page.getByRole('navigation', { name: 'Chat history' }).getByRole('link', { name: /Tell me about tide pools/ });
    await link.waitFor();
    assert.equal(await link.getAttribute('aria-current'), 'page');
    assert.match(await page.getByRole('heading', { level: 1 }).innerText(), /^Tell me about tide pools/);
    assert.match(await page.title(), /^Tell me about tide pools.* · chatrun$/);
    assert.ok(await page.getByRole('region', { name: 'Today' }).isVisible(), 'grouped under Today');
    assert.match(await page.getByLabel(/^Model: /).innerText(), /offline|Offline/i, 'the model is shown');
    await page.screenshot({ path: join(results, 'chat-light-1280x800.png') });
    await context.close();
  });

  it('grows the message box with its text, sends on Enter, adds a line on Shift+Enter, waits for IME', async () => {
    const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    const page = await context.newPage();
    await page.goto(fast.base);
    const box = page.getByRole('textbox', { name: 'Message' });
    await box.waitFor();
    const height = () => box.evaluate((el) => el.getBoundingClientRect().height);
    const oneLine = await height();
    await box.type('first line');
    await box.press('Shift+Enter');
    await box.type('second line');
    await box.press('Shift+Enter');
    await box.type('third line');
    assert.equal(await box.inputValue(), 'first line\nsecond line\nthird line', 'Shift+Enter adds a line');
    const threeLines = await height();
    assert.ok(threeLines > oneLine + 20, `the box grew (${oneLine} -> ${threeLines})`);
    // An Enter that confirms an IME composition must not send.
    await box.evaluate((el) => {
      el.dispatchEvent(new KeyboardEvent('keydown', { key: 'Enter', code: 'Enter', isComposing: true, bubbles: true, cancelable: true }));
    });
    await sleep(200);
    assert.equal(await users(page).count(), 0, 'nothing sent during composition');
    // A long text stops growing at about half the screen, then scrolls inside the box.
    await box.fill(Array.from({ length: 60 }, (_, i) => `line ${i}`).join('\n'));
    const tall = await height();
    assert.ok(tall <= 700 * 0.5 + 2 && tall > 300, `capped near half the screen (${tall})`);
    assert.ok(await box.evaluate((el) => el.scrollHeight > el.clientHeight), 'and scrolls inside');
    await box.fill('Hello there');
    await box.press('Enter');
    await users(page).first().waitFor();
    assert.equal(await box.inputValue(), '', 'the box is cleared');
    assert.ok((await height()) < oneLine + 4, 'and shrinks back');
    await idle(page);
    await context.close();
  });

  it('scrolls only the message list, follows the reply at the bottom, and stops following when scrolled up', async () => {
    const context = await browser.newContext({ viewport: { width: 900, height: 380 } });
    const page = await context.newPage();
    await page.goto(server.base);
    // A tall question, so the list overflows early in the reply and most of it streams after.
    await send(page, ['Write a long story about a lighthouse keeper and the sea, in parts:', 'one', 'two', 'three', 'four', 'five'].join('\n'));
    const list = page.getByRole('log', { name: 'Messages' });
    await page.waitForFunction(() => {
      const el = document.querySelector('[role="log"]');
      return el && el.scrollHeight > el.clientHeight + 60;
    }, null, { timeout: 30_000 });
    await partialReply(page, 5);
    const metrics = () =>
      list.evaluate((el) => ({ top: el.scrollTop, gap: el.scrollHeight - el.scrollTop - el.clientHeight, text: el.innerText.length }));
    // Following: the end of the reply stays in view as it grows.
    for (let i = 0; i < 2; i++) {
      await sleep(250);
      const m = await metrics();
      assert.ok(m.gap < 50, `following the reply (gap ${m.gap})`);
    }
    assert.equal(await page.getByRole('button', { name: 'Scroll to latest' }).count(), 0);
    // The page itself never scrolls; the message box stays in view.
    assert.equal(await page.evaluate(() => document.scrollingElement.scrollHeight <= innerHeight), true);
    const boxRect = await page.getByRole('textbox', { name: 'Message' }).boundingBox();
    assert.ok(boxRect.y + boxRect.height <= 380, 'the message box is on screen');
    // The reader scrolls up: the list stays where they put it while the reply grows.
    await list.hover();
    await page.mouse.wheel(0, -120);
    await page.getByRole('button', { name: 'Scroll to latest' }).waitFor({ timeout: 5000 });
    const held = await metrics();
    await sleep(600);
    const later = await metrics();
    assert.ok(later.text > held.text, 'the reply went on growing');
    assert.equal(later.top, held.top, 'but the list did not move');
    assert.ok(later.gap > 50);
    await page.getByRole('button', { name: 'Scroll to latest' }).click();
    await sleep(400);
    assert.ok((await metrics()).gap < 50, 'back at the end');
    assert.equal(await page.getByRole('button', { name: 'Scroll to latest' }).count(), 0);
    await sleep(400);
    assert.ok((await metrics()).gap < 50, 'and following again');
    await idle(page);
    await context.close();
  });

  it('Stop freezes the reply: what stays on screen is what was stored, also after a refresh', async () => {
    const context = await browser.newContext(desktop);
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'Write a long story about a lighthouse keeper');
    await partialReply(page, 6);
    // Read the text and click Stop in one step, so nothing can land in between.
    const atClick = await page.evaluate(() => {
      const all = document.querySelectorAll('article[aria-label="Assistant"] .message-body');
      const text = all[all.length - 1].innerText;
      document.querySelector('button[aria-label="Stop"]').click();
      return text;
    });
    await idle(page);
    await sleep(1000); // the turn completes on the server; the page shows what was stored
    const shown = plain(await replyText(lastAssistant(page)));
    const stored = await storedChat(page, chatIdOf(page));
    const kept = plain(storedText(stored.body.messages[1]));
    assert.equal(stored.body.session.streaming, false);
    assert.equal(shown, kept, 'the screen shows exactly the stored text');
    assert.ok(kept.startsWith(plain(atClick)), 'which is the text at the click (and at most the frame already in flight)');
    assert.ok(kept.split(' ').length - plain(atClick).split(' ').length <= 3, 'nothing streamed on after the stop');
    await sleep(800);
    assert.equal(plain(await replyText(lastAssistant(page))), shown, 'frozen');
    await page.reload();
    await lastAssistant(page).waitFor();
    assert.equal(plain(await replyText(lastAssistant(page))), kept);
    await context.close();
  });

  it('Stop also ends a reply that the page resumed after a refresh', async () => {
    const context = await browser.newContext(desktop);
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'Write a long story about a lighthouse keeper');
    await partialReply(page, 4);
    await page.reload();
    await partialReply(page, 8);
    await page.getByRole('button', { name: 'Stop' }).waitFor();
    const atClick = await page.evaluate(() => {
      const all = document.querySelectorAll('article[aria-label="Assistant"] .message-body');
      const text = all[all.length - 1].innerText;
      document.querySelector('button[aria-label="Stop"]').click();
      return text;
    });
    await idle(page);
    await sleep(1000);
    const stored = await storedChat(page, chatIdOf(page));
    assert.equal(stored.body.session.streaming, false, 'the server stopped the turn');
    const kept = plain(storedText(stored.body.messages[1]));
    const words = (t) => t.split(' ').length;
    assert.ok(kept.startsWith(plain(atClick)), 'the stored reply is what was shown');
    assert.ok(words(kept) - words(plain(atClick)) <= 3, `stopped where it was clicked (${words(plain(atClick))} -> ${words(kept)} words)`);
    assert.equal(plain(await replyText(lastAssistant(page))), kept);
    await context.close();
  });

  it('copies a finished message as markdown to the clipboard', async () => {
    const context = await browser.newContext(desktop);
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: fast.base });
    const page = await context.newPage();
    await page.goto(fast.base);
    await send(page, 'Hello there');
    await idle(page);
    await lastAssistant(page).getByRole('button', { name: 'Copy message' }).click();
    await lastAssistant(page).getByRole('button', { name: 'Copied' }).waitFor();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    const stored = await storedChat(page, chatIdOf(page));
    assert.equal(copied, storedText(stored.body.messages[1]), 'the reply as markdown');
    await users(page).first().getByRole('button', { name: 'Copy message' }).click();
    await sleep(200);
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'Hello there');
    await context.close();
  });

  it('edits an earlier message and resends it, replacing the conversation from there, also after a refresh', async () => {
    const context = await browser.newContext(desktop);
    const page = await context.newPage();
    await page.goto(fast.base);
    await send(page, 'Hello there');
    await idle(page);
    await send(page, 'Tell me about tide pools');
    await idle(page);
    const chatId = chatIdOf(page);
    const before = (await storedChat(page, chatId)).body.messages;
    assert.equal(before.length, 4);
    const first = users(page).first();
    await first.getByRole('button', { name: 'Edit message' }).click();
    const editor = first.getByRole('textbox', { name: 'Edit message' });
    assert.equal(await editor.inputValue(), 'Hello there');
    assert.equal(await editor.evaluate((el) => el === document.activeElement), true);
    await editor.fill('Explain how glaciers carve valleys');
    await first.getByRole('button', { name: 'Save and send' }).click();
    await page.waitForFunction(() => document.querySelectorAll('article[aria-label="You"]').length === 1, null, { timeout: 5000 });
    await idle(page);
    await page.waitForFunction(
      (oldId) => {
        const reply = document.querySelector('article[aria-label="Assistant"]');
        return reply && reply.getAttribute('data-message-id') !== oldId;
      },
      before[1].id,
    );
    await idle(page);
    const shownReply = plain(await replyText(lastAssistant(page)));
    const after = (await storedChat(page, chatId)).body.messages;
    assert.deepEqual(after.map((m) => m.role), ['user', 'assistant']);
    assert.equal(after[0].id, before[0].id, 'the same message, edited');
    assert.equal(storedText(after[0]), 'Explain how glaciers carve valleys');
    assert.notEqual(after[1].id, before[1].id);
    assert.equal(shownReply, plain(storedText(after[1])));
    // A new tab (no snapshot of this one) shows the stored, edited conversation.
    const other = await context.newPage();
    await other.goto(page.url());
    await lastAssistant(other).waitFor();
    assert.equal(await users(other).count(), 1);
    assert.equal(await replyText(users(other).first()), 'Explain how glaciers carve valleys');
    assert.equal(plain(await replyText(lastAssistant(other))), shownReply);
    await context.close();
  });

  it('regenerates the last reply', async () => {
    const context = await browser.newContext(desktop);
    const page = await context.newPage();
    await page.goto(fast.base);
    await send(page, 'Hello there');
    await idle(page);
    const firstId = await lastAssistant(page).getAttribute('data-message-id');
    assert.equal(await users(page).first().getByRole('button', { name: 'Regenerate reply' }).count(), 0);
    await lastAssistant(page).getByRole('button', { name: 'Regenerate reply' }).click();
    await page.waitForFunction(
      (id) => document.querySelector('article[aria-label="Assistant"]')?.getAttribute('data-message-id') !== id,
      firstId,
    );
    await idle(page);
    assert.equal(await assistants(page).count(), 1, 'the new reply replaces the old one');
    const stored = await storedChat(page, chatIdOf(page));
    assert.deepEqual(stored.body.messages.map((m) => m.role), ['user', 'assistant']);
    assert.notEqual(stored.body.messages[1].id, firstId);
    await context.close();
  });

  it('carries on after a refresh mid-reply and paints the chat within 300 ms', async () => {
    const context = await browser.newContext(desktop);
    const page = await context.newPage();
    await page.goto(server.base);
    await send(page, 'Explain how glaciers carve valleys');
    await partialReply(page, 5);
    const paints = [];
    const live = [];
    const ready = [];
    for (let i = 0; i < 3; i++) {
      const before = plain(await replyText(lastAssistant(page)));
      // Measured in the page, from navigation start: the first frame that shows the user's
      // message and the reply at least as far as it was before the refresh (first paint), and
      // the first frame where the reply has gone further (live again).
      await page.addInitScript((expected) => {
        const strip = (t) => t.replace(/\*\*|`/g, '').replace(/\s+/g, ' ').trim();
        const check = () => {
          const user = document.querySelector('article[aria-label="You"]');
          const replies = document.querySelectorAll('article[aria-label="Assistant"] .message-body');
          const reply = replies[replies.length - 1];
          if (!user || !reply) return;
          const text = strip(reply.innerText);
          if (window.__firstPaint === undefined && text.startsWith(expected.slice(0, 40)) && text.length >= expected.length) {
            window.__firstPaint = -1;
            window.__painted = text.length;
            requestAnimationFrame(() => (window.__firstPaint = performance.now()));
          } else if (window.__painted !== undefined && window.__live === undefined && text.length > window.__painted) {
            window.__live = -1;
            requestAnimationFrame(() => (window.__live = performance.now()));
            observer.disconnect();
          }
        };
        const observer = new MutationObserver(check);
        observer.observe(document, { childList: true, subtree: true, characterData: true });
      }, before);
      await page.reload();
      await page.waitForFunction(() => window.__firstPaint > 0 && window.__live > 0, null, { timeout: 10_000 });
      paints.push(await page.evaluate(() => window.__firstPaint));
      live.push(await page.evaluate(() => window.__live));
      ready.push(await page.evaluate(() => performance.getEntriesByName('chatrun:app-rendered')[0].startTime));
      assert.equal(await page.locator('#root').getAttribute('inert'), null, 'the app took over');
    }
    const ms = (list) => list.map((t) => `${Math.round(t)} ms`).join(', ');
    const median = (list) => [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)];
    console.log(
      `first paint after a refresh mid-reply: ${ms(paints)} (median ${Math.round(median(paints))} ms); app rendered: ${ms(ready)}; reply moving again: ${ms(live)}`,
    );
    assert.ok(median(paints) <= 300, `first paint ${median(paints)} ms`);
    await idle(page);
    const shown = await assistants(page).allInnerTexts();
    assert.equal(shown.length, 1, 'one reply');
    const stored = await storedChat(page, chatIdOf(page));
    assert.equal(plain(await replyText(lastAssistant(page))), plain(storedText(stored.body.messages[1])), 'nothing missing, nothing doubled');
    assert.equal(await users(page).count(), 1);
    await context.close();
  });

  it('shows the same reply live in a second tab', async () => {
    const context = await browser.newContext(desktop);
    const first = await context.newPage();
    await first.goto(server.base);
    await send(first, 'Hello there');
    await idle(first);
    const second = await context.newPage();
    await second.goto(first.url());
    await assistants(second).first().waitFor();
    await sleep(300);
    await send(first, 'What makes coral reefs so colourful?');
    await users(second).nth(1).waitFor({ timeout: 20_000 });
    await assistants(second).nth(1).waitFor({ timeout: 20_000 });
    await partialReply(second, 4);
    assert.equal(await first.getByRole('button', { name: 'Stop' }).isVisible(), true, 'still streaming when the second tab shows it');
    await idle(first);
    const expected = plain(await replyText(lastAssistant(first)));
    await second.waitForFunction(
      (want) => {
        const all = document.querySelectorAll('article[aria-label="Assistant"] .message-body');
        return all.length === 2 && all[1].innerText.replace(/\s+/g, ' ').trim().length >= want.length - 5;
      },
      expected,
      { timeout: 20_000 },
    );
    assert.equal(plain(await replyText(lastAssistant(second))), expected);
    await context.close();
  });
});
