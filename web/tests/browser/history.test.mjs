// A chat longer than one page of history (DESIGN §8: the newest 100 messages come with the
// chat), in headless Chromium against the real `chatrun serve`: scrolling to the top loads the
// older page in front without moving what the reader looks at, and an edit of a message of
// that older page works like any edit.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { idle, launchBrowser, results, startServer, storedChat, users } from './harness.mjs';

const TURNS = 51; // 102 messages: the newest page of 100 and an older page of 2.

let server;
let browser;

before(async () => {
  // Short, fast replies: the long chat is built in a few seconds.
  server = await startServer({ tokensPerSec: 5000, replyTokens: 3 });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Sends `turns` questions on the page's own user token over a WebSocket, one turn at a time. */
function buildLongChat(page, chatId, turns) {
  return page.evaluate(
    ({ chatId, turns }) =>
      new Promise((resolve, reject) => {
        const token = localStorage.getItem('chatrun.token');
        const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws?token=${token}`);
        let turn = 0;
        const next = () => {
          turn += 1;
          if (turn > turns) {
            ws.close();
            resolve(turns);
            return;
          }
          ws.send(
            JSON.stringify({
              action: 'send-message',
              requestId: `r${turn}`,
              chatId,
              trigger: 'submit-message',
              message: { id: `q${turn}`, role: 'user', parts: [{ type: 'text', text: `question ${turn}` }] },
            }),
          );
        };
        ws.onopen = next;
        ws.onerror = () => reject(new Error('the socket failed'));
        ws.onmessage = (event) => {
          const frame = JSON.parse(event.data);
          if (frame.type === 'error') reject(new Error(JSON.stringify(frame)));
          if (frame.type === 'turn-complete') next();
        };
      }),
    { chatId, turns },
  );
}

const shownIds = (page) =>
  page.evaluate(() => [...document.querySelectorAll('[role="log"] article')].map((a) => a.getAttribute('data-message-id')));

/** Where the message is, in pixels from the top of the list's visible area. */
const offsetInList = (page, messageId) =>
  page.evaluate((id) => {
    const list = document.querySelector('[role="log"]');
    const article = list.querySelector(`article[data-message-id="${id}"]`);
    return article.getBoundingClientRect().top - list.getBoundingClientRect().top;
  }, messageId);

describe('a history longer than a page', () => {
  it('loads the older page at the top, keeps the scroll position, and edits a message in it', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(server.base);
    await page.getByRole('textbox', { name: 'Message' }).waitFor();
    const chatId = 'long-history';
    await buildLongChat(page, chatId, TURNS);
    const stored = await storedChat(page, chatId);
    assert.equal(stored.body.messages.length, 100, 'the chat comes with its newest 100 messages');
    assert.equal(typeof stored.body.olderCursor, 'string');

    await page.goto(`${server.base}/c/${chatId}`);
    await users(page).last().waitFor();
    await idle(page);
    let ids = await shownIds(page);
    assert.equal(ids.length, 100, 'the newest page');
    assert.equal(ids[0], 'q2', 'starts after the first turn');
    assert.ok(!ids.includes('q1'));

    // The reader scrolls to the top: the older page goes in front, and the message that was at
    // the top stays where it was on screen.
    const anchorBefore = await page.evaluate(() => {
      const list = document.querySelector('[role="log"]');
      list.scrollTop = 0;
      const article = list.querySelector('article[data-message-id="q2"]');
      return article.getBoundingClientRect().top - list.getBoundingClientRect().top;
    });
    await page.waitForFunction(() => document.querySelectorAll('[role="log"] article').length === 102, null, {
      timeout: 10_000,
    });
    const anchorAfter = await offsetInList(page, 'q2');
    assert.ok(Math.abs(anchorAfter - anchorBefore) <= 2, `q2 stayed put: ${anchorBefore} -> ${anchorAfter}`);
    assert.ok((await page.evaluate(() => document.querySelector('[role="log"]').scrollTop)) > 0, 'not left at the top');
    ids = await shownIds(page);
    assert.deepEqual(ids.slice(0, 3), [ids[0], ids[1], 'q2']);
    assert.equal(ids[0], 'q1');
    assert.equal(new Set(ids).size, 102, 'nothing doubled');
    assert.equal(await page.getByRole('button', { name: 'Load earlier messages' }).count(), 0, 'nothing older');

    await page.evaluate(() => {
      document.querySelector('[role="log"]').scrollTop = 0;
    });
    const first = users(page).first();
    assert.equal(await first.locator('.message-body').innerText(), 'question 1');
    assert.ok(await first.isVisible());
    await page.screenshot({ path: join(results, 'history-older-page-1280x800.png') });

    // An edit of the first message (from the older page) replaces the rest of the chat.
    await first.getByRole('button', { name: 'Edit message' }).click();
    await first.getByRole('textbox', { name: 'Edit message' }).fill('question 1, edited');
    await first.getByRole('button', { name: 'Save and send' }).click();
    await page.waitForFunction(() => document.querySelectorAll('[role="log"] article').length === 2, null, { timeout: 10_000 });
    await idle(page);
    const edited = await storedChat(page, chatId);
    assert.deepEqual(
      edited.body.messages.map((m) => m.id),
      ['q1', (await shownIds(page))[1]],
    );
    assert.equal(edited.body.messages[0].parts[0].text, 'question 1, edited');
    assert.equal(edited.body.olderCursor, null);
    await context.close();
  });
});
