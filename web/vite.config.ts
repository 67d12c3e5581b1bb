import { defineConfig } from 'vitest/config';

export default defineConfig({
  server: {
    // `npm run dev` against a local `chatrun serve`.
    proxy: {
      '/api': 'http://127.0.0.1:3000',
      '/ws': { target: 'ws://127.0.0.1:3000', ws: true },
    },
  },
  test: {
    include: ['tests/unit/**/*.test.ts'],
    environment: 'node',
  },
});
