// An assistant message's markdown: GitHub-flavoured, with code blocks that have their own copy
// button and syntax highlighting (highlight.js, fetched on the first code block).
import { memo, useEffect, useState } from 'react';
import ReactMarkdown, { type Components } from 'react-markdown';
import remarkGfm from 'remark-gfm';
import { CopyButton } from './CopyButton';

let highlighter: Promise<typeof import('./highlight')> | undefined;
const loadHighlighter = () => (highlighter ??= import('./highlight'));

interface HastNode {
  type: string;
  value?: string;
  tagName?: string;
  properties?: { className?: unknown };
  children?: HastNode[];
}

const textOf = (node: HastNode): string =>
  node.type === 'text' ? (node.value ?? '') : (node.children ?? []).map(textOf).join('');

function CodeBlock({ code, language }: { code: string; language: string | undefined }) {
  const [html, setHtml] = useState<string | null>(null);
  useEffect(() => {
    let live = true;
    loadHighlighter()
      .then(({ highlight }) => {
        if (live) setHtml(highlight(code, language));
      })
      .catch(() => {
        // Plain text it stays.
      });
    return () => {
      live = false;
    };
  }, [code, language]);
  return (
    <div className="code-block" role="group" aria-label={`${language ?? 'Code'} code`}>
      <div className="code-head">
        <span className="code-lang">{language ?? 'code'}</span>
        <CopyButton text={() => code} label="Copy code" />
      </div>
      <pre>
        {html === null ? (
          <code className="hljs">{code}</code>
        ) : (
          <code className="hljs" data-highlighted="yes" dangerouslySetInnerHTML={{ __html: html }} />
        )}
      </pre>
    </div>
  );
}

const components: Components = {
  pre({ node }) {
    const code = (node as HastNode | undefined)?.children?.find((c) => c.tagName === 'code');
    const classes = code?.properties?.className;
    const language = Array.isArray(classes)
      ? classes.map(String).find((c) => c.startsWith('language-'))?.slice('language-'.length)
      : undefined;
    return <CodeBlock code={code ? textOf(code).replace(/\n$/, '') : ''} language={language} />;
  },
  a({ node: _node, ...props }) {
    return <a {...props} target="_blank" rel="noopener noreferrer" />;
  },
};

export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <div className="markdown">
      <ReactMarkdown remarkPlugins={[remarkGfm]} components={components}>
        {text}
      </ReactMarkdown>
    </div>
  );
});
