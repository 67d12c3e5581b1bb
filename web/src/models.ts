// Which model the open chat uses, and what a send tells the server about it. A chat keeps the
// model it was created with until a message picks another one; the server makes the pick the
// chat's model once that message's turn starts, and answers that turn and later ones with it.
import type { ModelInfo } from './protocol';

/**
 * The model the header shows for the open chat: the one picked for its next message, else the
 * chat's own (chats stored before models were recorded have ''), else the default.
 */
export function shownModel(picked: string | undefined, chatModel: string | undefined, defaultModel: string | undefined) {
  return picked || chatModel || defaultModel;
}

/**
 * The `model` a send carries: the pick when it differs from the chat's own, nothing otherwise,
 * so a chat whose model the server no longer offers is not refused for naming it.
 */
export function modelForSend(picked: string | undefined, chatModel: string | undefined): string | undefined {
  return picked && picked !== chatModel ? picked : undefined;
}

/** The options of the header's model picker: every offered model, plus the chat's own when
 *  the server no longer offers it (so the picker still shows what the chat used). */
export function modelOptions(models: ModelInfo[], current: string | undefined): ModelInfo[] {
  if (!current || models.some((m) => m.id === current)) return models;
  return [...models, { id: current, label: `${current} (no longer offered)`, offline: false }];
}

/** A model's label, or its id when the server does not list it. */
export function modelLabel(models: ModelInfo[], id: string | undefined): string | undefined {
  return models.find((m) => m.id === id)?.label ?? id;
}
