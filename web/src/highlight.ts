// Syntax highlighting, loaded on first use (a code block on screen) so that the first paint
// does not carry it. highlight.js with its common languages.
import hljs from 'highlight.js/lib/common';

/** HTML (escaped by highlight.js) of `code` highlighted as `language`, or as its best guess. */
export function highlight(code: string, language: string | undefined): string {
  if (language && hljs.getLanguage(language)) {
    return hljs.highlight(code, { language, ignoreIllegals: true }).value;
  }
  return hljs.highlightAuto(code).value;
}
