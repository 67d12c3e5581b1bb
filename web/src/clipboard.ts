// Copying text. `navigator.clipboard` exists only in secure contexts (https, localhost); over
// plain http on a LAN address the page falls back to a hidden textarea and `execCommand('copy')`.

/**
 * Puts `text` on the clipboard.
 * # Errors
 * When the browser refuses both ways.
 */
export async function copyText(text: string): Promise<void> {
  if (window.isSecureContext && navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch {
      // Denied (no permission, document not focused): try the old way.
    }
  }
  const focused = document.activeElement as HTMLElement | null;
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.setAttribute('aria-hidden', 'true');
  Object.assign(area.style, { position: 'fixed', top: '0', left: '0', opacity: '0', pointerEvents: 'none' });
  document.body.appendChild(area);
  area.select();
  area.setSelectionRange(0, text.length);
  let copied = false;
  try {
    copied = document.execCommand('copy');
  } finally {
    area.remove();
    focused?.focus?.({ preventScroll: true });
  }
  if (!copied) throw new Error('The browser did not allow copying.');
}
