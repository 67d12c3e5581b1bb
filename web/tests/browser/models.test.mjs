// Changing the open chat's model in a real headless Chromium against the real `chatrun serve`,
// which offers a second model of the offline provider (`CHAT_MODELS`): the header shows the
// chat's model, a change answers the next message, and it is stored with the chat.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { chatIdOf, idle, lastAssistant, launchBrowser, replyText, results, send, startServer, storedChat } from './harness.mjs';

let server;
let browser;

before(async () => {
  [server, browser] = await Promise.all([startServer({ tokensPerSec: 80, models: ['offline-large'] }), launchBrowser()]);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

describe('the chat’s model', () => {
  it('is shown in the header, changes for the next message, and survives a refresh', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(server.base);
    const picker = page.getByRole('combobox', { name: 'Model' });
    await picker.waitFor();
    assert.equal(await picker.inputValue(), 'offline', 'a new chat starts on the default model');
    const options = await picker.locator('option').allInnerTexts();
    assert.deepEqual(options, ['Offline (built-in)', 'offline-large (offline)']);

    await send(page, 'Tell me about tide pools');
    await page.waitForURL(/\/c\/[A-Za-z0-9_-]+$/);
    await idle(page);
    assert.doesNotMatch(await replyText(lastAssistant(page)), /Answering as/, 'the default model answered');
    const chatId = chatIdOf(page);
    assert.equal((await storedChat(page, chatId)).body.model, 'offline');

    // Change it from the keyboard: focus the picker, pick the next model, back to the box.
    await picker.focus();
    await page.keyboard.press('ArrowDown');
    assert.equal(await picker.inputValue(), 'offline-large');
    assert.equal(
      (await storedChat(page, chatId)).body.model,
      'offline',
      'picking alone changes nothing stored: the next message does',
    );
    await page.getByRole('textbox', { name: 'Message' }).focus();
    await send(page, 'What lives in them?');
    await page.getByRole('article', { name: 'Assistant' }).nth(1).waitFor();
    await idle(page);
    assert.match(await replyText(lastAssistant(page)), /^Answering as offline-large\./, 'the reply comes from the new model');
    const stored = (await storedChat(page, chatId)).body;
    assert.equal(stored.model, 'offline-large', 'the chat keeps the new model');
    assert.equal(stored.messages[3].metadata.model, 'offline-large');
    assert.equal(stored.messages[1].metadata.model, 'offline', 'the earlier reply stays the old model’s');

    await page.reload();
    await page.getByRole('article', { name: 'Assistant' }).nth(1).waitFor();
    const after = page.getByRole('combobox', { name: 'Model' });
    await after.waitFor();
    // The header follows the server's copy of the chat once it loads.
    for (let i = 0; i < 50 && (await after.inputValue()) !== 'offline-large'; i++) await page.waitForTimeout(100);
    assert.equal(await after.inputValue(), 'offline-large', 'the header still shows it after a refresh');

    // The next message, with no new pick, stays on the chat's model.
    await send(page, 'And in winter?');
    await page.getByRole('article', { name: 'Assistant' }).nth(2).waitFor();
    await idle(page);
    assert.match(await replyText(lastAssistant(page)), /^Answering as offline-large\./);
    assert.equal((await storedChat(page, chatId)).body.model, 'offline-large');
    await page.screenshot({ path: join(results, 'model-picker-1280x800.png') });
    await context.close();
  });
});
