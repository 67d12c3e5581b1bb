import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { loadRuntimeConfig } from './api';
import { App } from './App';
import './styles.css';

void loadRuntimeConfig().then(() => {
  // index.html may have painted the tab's last view of this chat: the app's first render
  // replaces it (App then lifts the `inert` it was painted with).
  createRoot(document.getElementById('root')!).render(
    <StrictMode>
      <App />
    </StrictMode>,
  );
});
