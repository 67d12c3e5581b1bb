import { describe, expect, it } from 'vitest';
import { modelForSend, modelLabel, modelOptions, shownModel } from '../../src/models';

const models = [
  { id: 'offline', label: 'Offline (built-in)', offline: true },
  { id: 'offline-large', label: 'offline-large (offline)', offline: true },
];

describe('the open chat’s model', () => {
  it('shows the pick, else the chat’s model, else the default', () => {
    expect(shownModel('offline-large', 'offline', 'offline')).toBe('offline-large');
    expect(shownModel(undefined, 'offline-large', 'offline')).toBe('offline-large');
    expect(shownModel(undefined, '', 'offline')).toBe('offline');
    expect(shownModel(undefined, undefined, 'offline')).toBe('offline');
    expect(shownModel(undefined, undefined, undefined)).toBeUndefined();
  });

  it('sends a model only when the pick changes the chat’s', () => {
    expect(modelForSend('offline-large', 'offline')).toBe('offline-large');
    expect(modelForSend('offline', 'offline')).toBeUndefined();
    expect(modelForSend(undefined, 'offline')).toBeUndefined();
    // A new chat (no model yet) sends what was picked, or nothing for the server's default.
    expect(modelForSend('offline-large', undefined)).toBe('offline-large');
    expect(modelForSend(undefined, undefined)).toBeUndefined();
  });

  it('keeps a chat’s model in the picker when the server no longer offers it', () => {
    expect(modelOptions(models, 'offline')).toBe(models);
    expect(modelOptions(models, undefined)).toBe(models);
    const options = modelOptions(models, 'gpt-4o');
    expect(options.map((m) => m.id)).toEqual(['offline', 'offline-large', 'gpt-4o']);
    expect(options[2].label).toMatch(/no longer offered/);
  });

  it('labels a model by the server’s label, or by its id', () => {
    expect(modelLabel(models, 'offline-large')).toBe('offline-large (offline)');
    expect(modelLabel(models, 'gpt-4o')).toBe('gpt-4o');
    expect(modelLabel(models, undefined)).toBeUndefined();
  });
});
