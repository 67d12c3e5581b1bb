// The CDK app: `make deploy` (or `npx cdk deploy`; see infra/README.md).
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as cdk from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { AssetError, chooseAssets } from '../lib/assets.js';
import { ChatrunStack } from '../lib/chatrun-stack.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const app = new cdk.App();
const context = (key: string) => app.node.tryGetContext(key) as string | undefined;
const flag = (key: string, byDefault: boolean) => String(context(key) ?? byDefault) !== 'false';

let assets;
try {
  assets = chooseAssets({
    repoRoot,
    functionAssets: context('functionAssets'),
    placeholders: flag('placeholderAssets', false),
    // `cdk destroy` and `cdk ls` bundle nothing: they need no built code.
    bundling: ((app.node.tryGetContext('aws:cdk:bundling-stacks') as string[] | undefined) ?? ['**']).length > 0,
  });
} catch (e) {
  if (!(e instanceof AssetError)) throw e;
  console.error(e.message);
  process.exit(1);
}
if (assets.functionCode.kind === 'placeholder' && flag('placeholderAssets', false)) {
  console.warn('chatrun: synthesised with placeholder functions (-c placeholderAssets=true): do not deploy this.');
}

const turnConcurrency = context('turnConcurrency');
new ChatrunStack(app, context('stackName') ?? 'Chatrun', {
  repoRoot,
  ...assets,
  modelApiKeySecretName: context('modelApiKeySecretName'),
  chatModel: context('chatModel'),
  chatModels: context('chatModels')?.split(',').map((id: string) => id.trim()).filter(Boolean),
  openAiBaseUrl: context('openAiBaseUrl'),
  deletionProtection: flag('deletionProtection', true),
  alarmEmail: context('alarmEmail'),
  manageApiGatewayAccount: flag('manageApiGatewayAccount', true),
  turnConcurrency: turnConcurrency ? Number(turnConcurrency) : undefined,
  env: { account: process.env.CDK_DEFAULT_ACCOUNT, region: process.env.CDK_DEFAULT_REGION },
});
cdk.Aspects.of(app).add(new AwsSolutionsChecks({ verbose: true }));
