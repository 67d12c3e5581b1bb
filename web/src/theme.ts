// Light and dark: the system setting, unless the user picked one with the toggle (remembered).
// index.html applies the remembered choice before the first paint, so there is no flash.

export type Theme = 'light' | 'dark';
const KEY = 'chatrun.theme';

export function rememberedTheme(): Theme | null {
  try {
    const value = localStorage.getItem(KEY);
    return value === 'light' || value === 'dark' ? value : null;
  } catch {
    return null;
  }
}

export function systemTheme(): Theme {
  return window.matchMedia?.('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

/** Remembers and applies an explicit choice. */
export function chooseTheme(theme: Theme) {
  try {
    localStorage.setItem(KEY, theme);
  } catch {
    // Private mode: still applied for this page.
  }
  document.documentElement.dataset.theme = theme;
}
