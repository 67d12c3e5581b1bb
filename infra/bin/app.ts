// The CDK app: `npx cdk deploy` (see infra/README.md).
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as cdk from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { placeholderFunctionAssets, placeholderWebDist } from '../lib/assets.js';
import { ChatrunStack, prebuiltAssetsIn } from '../lib/chatrun-stack.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const app = new cdk.App();
const context = (key: string) => app.node.tryGetContext(key) as string | undefined;

let functionAssets = context('functionAssets') ?? prebuiltAssetsIn(repoRoot);
if (!functionAssets) {
  console.warn('chatrun: no prebuilt functions in target/lambda: synthesising with placeholders. Run `cargo lambda build --release --arm64 --features ...` (infra/README.md) before deploying, or pass -c functionAssets=cargo-lambda.');
  functionAssets = placeholderFunctionAssets();
}
const builtWeb = join(repoRoot, 'web/dist');
const webDist = existsSync(join(builtWeb, 'index.html')) ? builtWeb : placeholderWebDist();

new ChatrunStack(app, context('stackName') ?? 'Chatrun', {
  repoRoot,
  functionAssets,
  webDist,
  modelApiKeySecretName: context('modelApiKeySecretName'),
  chatModel: context('chatModel'),
  openAiBaseUrl: context('openAiBaseUrl'),
  deletionProtection: String(context('deletionProtection') ?? 'true') !== 'false',
  alarmEmail: context('alarmEmail'),
  env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
});
cdk.Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
