import { useEffect, useState } from 'react';
import { copyText } from './clipboard';
import { CheckIcon, CopyIcon } from './icons';

/** A button that copies `text`, then says "Copied" (or why it could not) for a moment. */
export function CopyButton({ text, label, className }: { text: () => string; label: string; className?: string }) {
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle');
  useEffect(() => {
    if (state === 'idle') return;
    const timer = setTimeout(() => setState('idle'), 2000);
    return () => clearTimeout(timer);
  }, [state]);
  const name = state === 'copied' ? 'Copied' : state === 'failed' ? 'Copy failed' : label;
  return (
    <button
      type="button"
      className={`icon-button ${className ?? ''}`}
      aria-label={name}
      title={name}
      onClick={() =>
        copyText(text()).then(
          () => setState('copied'),
          () => setState('failed'),
        )
      }
    >
      {state === 'copied' ? <CheckIcon /> : <CopyIcon />}
      <span className="button-text">{state === 'copied' ? 'Copied' : state === 'failed' ? 'Failed' : 'Copy'}</span>
    </button>
  );
}
