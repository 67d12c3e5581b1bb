// The stack synthesised offline (no credentials, placeholder function and web assets), with its
// resources, their key properties, least-privilege IAM per function and cdk-nag's AwsSolutions
// checks asserted.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as cdk from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { placeholderFunctionAssets, placeholderWebDist } from '../lib/assets.js';
import { assemblyBootstraps } from '../lib/bootstraps.js';
import { ChatrunStack, FRAME_CADENCE, FUNCTION_NAMES, type FunctionName, TURN_PIPELINE } from '../lib/chatrun-stack.js';

type Props = ConstructorParameters<typeof ChatrunStack>[2];

function synth(extra: Partial<Props> = {}, context: Record<string, unknown> = {}) {
  const app = new cdk.App({ context });
  const stack = new ChatrunStack(app, 'Test', {
    repoRoot: '/nonexistent',
    functionCode: { kind: 'placeholder', dir: placeholderFunctionAssets() },
    webDist: placeholderWebDist(),
    deletionProtection: true,
    modelApiKeySecretName: 'chatrun/openai',
    env: { account: '123456789012', region: 'eu-west-1' },
    ...extra,
  });
  cdk.Aspects.of(app).add(new AwsSolutionsChecks());
  const assembly = app.synth();
  return { stack, template: Template.fromStack(stack), assemblyDir: assembly.directory };
}

const { stack, template, assemblyDir } = synth();
const resourcesOf = (t: Template, type: string) => Object.entries(t.findResources(type)) as [string, any][];
const resources = (type: string) => resourcesOf(template, type).map(([, r]) => r);
const functionsOf = (t: Template) =>
  Object.fromEntries(
    resourcesOf(t, 'AWS::Lambda::Function')
      .filter(([, f]) => String(f.Properties.Description).startsWith('chatrun '))
      .map(([id, f]) => [String(f.Properties.Description).slice('chatrun '.length), { id, ...f }]),
  ) as Record<FunctionName, any>;
const functions = functionsOf(template);

/** Every statement of the policies attached to a function's role. */
function statementsOf(t: Template, name: FunctionName): any[] {
  const role = functionsOf(t)[name].Properties.Role['Fn::GetAtt'][0];
  return resourcesOf(t, 'AWS::IAM::Policy')
    .filter(([, p]) => p.Properties.Roles.some((r: any) => r.Ref === role))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement);
}
const actionsOf = (statements: any[]) => new Set(statements.flatMap((s) => [s.Action].flat()));
const withAction = (statements: any[], action: string) => statements.filter((s) => [s.Action].flat().includes(action));
/** The literal strings of a resource (ARN pieces of an Fn::Join included). */
function strings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  if (value && typeof value === 'object') return Object.values(value).flatMap(strings);
  return [];
}

describe('chatrun stack', () => {
  it('has the single table with TTL, the byOwner index, PITR and deletion protection', () => {
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      BillingMode: 'PAY_PER_REQUEST',
      TimeToLiveSpecification: { AttributeName: 'expiresAt', Enabled: true },
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      DeletionProtectionEnabled: true,
      GlobalSecondaryIndexes: [
        Match.objectLike({
          IndexName: 'byOwner',
          KeySchema: [
            { AttributeName: 'gsi1pk', KeyType: 'HASH' },
            { AttributeName: 'gsi1sk', KeyType: 'RANGE' },
          ],
        }),
      ],
    });
    const off = synth({ deletionProtection: false }).template;
    off.hasResourceProperties('AWS::DynamoDB::Table', { DeletionProtectionEnabled: false });
  });

  it('feeds run-turn from the FIFO turn queue with settings that fit its heartbeat and concurrent batches', () => {
    const queues = resourcesOf(template, 'AWS::SQS::Queue');
    assert.equal(queues.length, 2);
    for (const [, q] of queues) assert.equal(q.Properties.FifoQueue, true);
    const [turnsId, turns] = queues.find(([, q]) => q.Properties.RedrivePolicy)!;
    const [deadLettersId, deadLetters] = queues.find(([, q]) => !q.Properties.RedrivePolicy)!;
    const runTurn = functions['run-turn'];
    assert.equal(runTurn.Properties.Timeout, 900, 'a turn may stream for Lambda\'s full 15 minutes');
    assert.equal(runTurn.Properties.MemorySize, TURN_PIPELINE.runTurnMemoryMb);
    for (const q of [turns, deadLetters]) {
      // AWS refuses an event source mapping on a queue whose visibility is below the timeout.
      assert.ok(q.Properties.VisibilityTimeout >= runTurn.Properties.Timeout, `visibility ${q.Properties.VisibilityTimeout}`);
    }
    const env = runTurn.Properties.Environment.Variables;
    assert.equal(turns.Properties.RedrivePolicy.maxReceiveCount, TURN_PIPELINE.maxReceiveCount);
    assert.equal(env.CHAT_MAX_RECEIVES, String(turns.Properties.RedrivePolicy.maxReceiveCount), 'run-turn knows the last receive');
    assert.ok(Number(env.CHAT_TURN_LEASE_SECS) * 4 <= turns.Properties.VisibilityTimeout, 'the heartbeat lease, not the queue, brings crashed turns back');
    assert.deepEqual(env.CHAT_TURN_QUEUE_URL, { Ref: turnsId });
    assert.deepEqual(env.CHAT_DEAD_LETTER_QUEUE_URL, { Ref: deadLettersId });
    assert.deepEqual(env.CHAT_DEAD_LETTER_QUEUE_ARN, { 'Fn::GetAtt': [deadLettersId, 'Arn'] });
    // Every frame is billed (a write, a read, a message): run-turn widens its frames after the
    // first second of a reply.
    assert.equal(env.CHAT_FRAME_INTERVAL_MS, String(FRAME_CADENCE.intervalMs));
    assert.equal(env.CHAT_FRAME_INTERVAL_MAX_MS, String(FRAME_CADENCE.maxIntervalMs));
    assert.equal(env.CHAT_FRAME_RAMP_MS, String(FRAME_CADENCE.rampMs));
    assert.ok(FRAME_CADENCE.maxIntervalMs > FRAME_CADENCE.intervalMs, 'an adaptive cadence');
    assert.ok(FRAME_CADENCE.maxIntervalMs <= 1000, 'the page spreads a frame over at most a second');

    const mappings = resources('AWS::Lambda::EventSourceMapping');
    assert.equal(mappings.length, 2, 'the turn queue and its dead-letter queue');
    const mappingOf = (queueId: string) => mappings.find((m) => m.Properties.EventSourceArn['Fn::GetAtt'][0] === queueId);
    for (const [queueId, concurrency] of [[turnsId, TURN_PIPELINE.turnConcurrency], [deadLettersId, 2]] as const) {
      const m = mappingOf(queueId);
      assert.deepEqual(m.Properties.FunctionName, { Ref: runTurn.id });
      assert.deepEqual(m.Properties.FunctionResponseTypes, ['ReportBatchItemFailures']);
      assert.equal(m.Properties.BatchSize, 10);
      assert.equal(m.Properties.MaximumBatchingWindowInSeconds, undefined, 'FIFO queues take no batching window');
      assert.deepEqual(m.Properties.ScalingConfig, { MaximumConcurrency: concurrency });
    }
    const smaller = synth({ turnConcurrency: 5 }).template;
    assert.ok(resourcesOf(smaller, 'AWS::Lambda::EventSourceMapping').some(([, m]) => m.Properties.ScalingConfig.MaximumConcurrency === 5));

    const visibility = withAction(statementsOf(template, 'run-turn'), 'sqs:ChangeMessageVisibility');
    const heldQueues = visibility.flatMap((s) => [s.Resource].flat()).map((r: any) => r['Fn::GetAtt'][0]);
    assert.deepEqual(new Set(heldQueues), new Set([turnsId, deadLettersId]), 'run-turn holds and backs off jobs of both queues');
    for (const policy of resources('AWS::SQS::QueuePolicy')) {
      assert.ok(JSON.stringify(policy).includes('aws:SecureTransport'), 'SSL enforced');
    }
  });

  it('runs five arm64 Rust functions, each with the settings it needs and no secret in its environment', () => {
    assert.deepEqual(Object.keys(functions).sort(), [...FUNCTION_NAMES].sort());
    const needs: Record<FunctionName, string[]> = {
      connect: [],
      // The ARN names the provider whose models send-message accepts; it cannot read the key.
      'send-message': ['CHAT_TURN_QUEUE_URL', 'CHAT_WS_MANAGEMENT_ENDPOINT', 'CHAT_MODEL_API_KEY_SECRET_ARN'],
      'stream-out': ['CHAT_WS_MANAGEMENT_ENDPOINT'],
      'run-turn': [
        'CHAT_TURN_QUEUE_URL', 'CHAT_DEAD_LETTER_QUEUE_URL', 'CHAT_DEAD_LETTER_QUEUE_ARN', 'CHAT_WS_MANAGEMENT_ENDPOINT', 'CHAT_MODEL_API_KEY_SECRET_ARN',
        'CHAT_FRAME_INTERVAL_MS', 'CHAT_FRAME_INTERVAL_MAX_MS', 'CHAT_FRAME_RAMP_MS',
      ],
      api: ['CHAT_MODEL_API_KEY_SECRET_ARN'],
    };
    for (const [name, f] of Object.entries(functions) as [FunctionName, any][]) {
      assert.deepEqual(f.Properties.Architectures, ['arm64']);
      assert.equal(f.Properties.Runtime, 'provided.al2023');
      const env = f.Properties.Environment.Variables;
      for (const forbidden of ['CHAT_TOKEN_SECRET', 'OPENAI_API_KEY', 'ANTHROPIC_API_KEY']) assert.equal(env[forbidden], undefined);
      assert.ok(env.CHAT_TOKEN_SECRET_ARN, 'the token secret is read from Secrets Manager');
      assert.ok(env.CHAT_TABLE_NAME);
      for (const key of needs[name]) assert.ok(env[key], `${name} needs ${key}`);
      if (!needs[name].includes('CHAT_TURN_QUEUE_URL')) assert.equal(env.CHAT_TURN_QUEUE_URL, undefined, `${name} queues nothing`);
    }
    template.hasResourceProperties('AWS::SecretsManager::Secret', { GenerateSecretString: Match.objectLike({ PasswordLength: 48 }) });
    const logGroups = resources('AWS::Logs::LogGroup');
    assert.ok(logGroups.length >= 7);
    for (const g of logGroups) assert.equal(g.Properties.RetentionInDays, 30);
  });

  it('gives the functions that list, accept or call models the same model list', () => {
    const listed = functionsOf(synth({ chatModel: 'gpt-4o-mini', chatModels: ['gpt-4o', 'o4-mini'] }).template);
    for (const name of ['send-message', 'run-turn', 'api'] as const) {
      const env = listed[name].Properties.Environment.Variables;
      assert.equal(env.CHAT_MODEL, 'gpt-4o-mini', name);
      assert.equal(env.CHAT_MODELS, 'gpt-4o,o4-mini', name);
    }
    assert.equal(functions['send-message'].Properties.Environment.Variables.CHAT_MODELS, undefined, 'none unless configured');
  });

  it('finds every function\'s bootstrap in the synthesised assets, and refuses the placeholders', () => {
    const found = assemblyBootstraps(assemblyDir);
    assert.deepEqual(found.map((b) => b.name).sort(), [...FUNCTION_NAMES].sort());
    for (const b of found) assert.match(b.problems.join(), /not ELF, not an aarch64 ELF/, b.name);
  });

  it('gives API Gateway its account CloudWatch role before the WebSocket stage logs, unless told the account has one', () => {
    const [accountId, account] = resourcesOf(template, 'AWS::ApiGateway::Account')[0];
    assert.equal(account.DeletionPolicy, 'Retain', 'account-wide: other APIs may rely on it');
    const roleId = account.Properties.CloudWatchRoleArn['Fn::GetAtt'][0];
    const role = template.toJSON().Resources[roleId];
    assert.equal(role.Properties.AssumeRolePolicyDocument.Statement[0].Principal.Service, 'apigateway.amazonaws.com');
    assert.ok(JSON.stringify(role.Properties.ManagedPolicyArns).includes('AmazonAPIGatewayPushToCloudWatchLogs'));
    const [, wsStage] = resourcesOf(template, 'AWS::ApiGatewayV2::Stage').find(([, s]) => s.Properties.StageName === 'live')!;
    assert.ok(wsStage.Properties.AccessLogSettings.DestinationArn);
    assert.ok([wsStage.DependsOn].flat().includes(accountId), 'the stage is created after the account setting');

    const managed = synth({ manageApiGatewayAccount: false }).template;
    assert.equal(resourcesOf(managed, 'AWS::ApiGateway::Account').length, 0);
  });

  it('routes the WebSocket API on action, with a throttled stage', () => {
    template.hasResourceProperties('AWS::ApiGatewayV2::Api', { ProtocolType: 'WEBSOCKET', RouteSelectionExpression: '$request.body.action' });
    const routes = resources('AWS::ApiGatewayV2::Route').map((r) => r.Properties.RouteKey).filter((k) => k);
    for (const key of ['$connect', '$disconnect', '$default', 'send-message', 'stop', 'resume', 'unsubscribe', 'ping']) {
      assert.ok(routes.includes(key), `route ${key}`);
    }
    template.hasResourceProperties('AWS::ApiGatewayV2::Stage', {
      StageName: 'live',
      DefaultRouteSettings: Match.objectLike({ ThrottlingRateLimit: 500, ThrottlingBurstLimit: 1000 }),
      AccessLogSettings: Match.objectLike({ DestinationArn: Match.anyValue() }),
    });
  });

  it('serves /api on the HTTP API with CORS limited to the web origin', () => {
    const apis = resources('AWS::ApiGatewayV2::Api').filter((a) => a.Properties.ProtocolType === 'HTTP');
    assert.equal(apis.length, 1);
    const origins = JSON.stringify(apis[0].Properties.CorsConfiguration.AllowOrigins);
    assert.ok(!origins.includes('"*"'), origins);
    assert.ok(origins.includes('DomainName'), 'the CloudFront domain');
    assert.ok(resources('AWS::ApiGatewayV2::Route').some((r) => r.Properties.RouteKey === 'GET /api/{proxy+}'));
  });

  it('grants each function only the table actions, secrets, queue actions and @connections it uses', () => {
    const tableId = resourcesOf(template, 'AWS::DynamoDB::Table')[0][0];
    const tokenSecretId = resourcesOf(template, 'AWS::SecretsManager::Secret')[0][0];
    const expectedTable: Record<FunctionName, string[]> = {
      connect: ['GetItem', 'Query', 'PutItem', 'BatchWriteItem'],
      'send-message': ['GetItem', 'Query', 'PutItem', 'UpdateItem', 'BatchWriteItem'],
      'stream-out': ['GetItem', 'Query', 'PutItem', 'UpdateItem', 'BatchWriteItem'],
      'run-turn': ['GetItem', 'Query', 'PutItem', 'UpdateItem', 'BatchWriteItem'],
      api: ['GetItem', 'Query', 'PutItem', 'UpdateItem', 'BatchWriteItem'],
    };
    const expectedOther: Record<FunctionName, string[]> = {
      connect: [],
      'send-message': ['sqs:SendMessage', 'execute-api:ManageConnections'],
      'stream-out': ['execute-api:ManageConnections'],
      // Receive/delete/attributes come with the event source mappings.
      'run-turn': ['sqs:ChangeMessageVisibility', 'execute-api:ManageConnections', 'sqs:ReceiveMessage', 'sqs:DeleteMessage', 'sqs:GetQueueAttributes', 'sqs:GetQueueUrl'],
      api: [],
    };
    for (const name of FUNCTION_NAMES) {
      const statements = statementsOf(template, name);
      const actions = actionsOf(statements);
      const expected = new Set([
        ...expectedTable[name].map((a) => `dynamodb:${a}`),
        ...expectedOther[name],
        'secretsmanager:GetSecretValue',
        'logs:CreateLogStream',
        'logs:PutLogEvents',
      ]);
      assert.deepEqual(actions, expected, name);
      assert.ok(!actions.has('dynamodb:Scan'), `${name}: nothing scans the table`);
      for (const s of statements) {
        for (const action of [s.Action].flat()) assert.ok(!action.includes('*'), `${name}: wildcard action ${action}`);
        // Wildcards inside ARNs: only the connection id of @connections on this stage.
        for (const piece of strings(s.Resource)) {
          if (!piece.includes('*')) continue;
          assert.match(piece, /^\/live\/(POST|DELETE)\/@connections\/\*$/, `${name}: wildcard resource ${JSON.stringify(s.Resource)}`);
        }
      }
      for (const s of statements.filter((s) => [s.Action].flat().some((a: string) => a.startsWith('dynamodb:')))) {
        const targets = [s.Resource].flat().map((r: any) => JSON.stringify(r));
        assert.ok(targets.every((t) => t.includes(tableId)), `${name}: this table only`);
        assert.equal(targets.some((t) => t.includes('/index/')), name === 'api', `${name}: only api lists chats by owner`);
      }
      const secrets = withAction(statements, 'secretsmanager:GetSecretValue').flatMap((s) => [s.Resource].flat()).map((r: any) => JSON.stringify(r));
      assert.ok(secrets.some((r) => r.includes(tokenSecretId)), `${name} reads the token secret`);
      const readsModelKey = secrets.some((r) => r.includes('chatrun/openai-??????'));
      assert.equal(readsModelKey, name === 'run-turn', `${name}: model key`);
    }
    const methods = (name: FunctionName) =>
      withAction(statementsOf(template, name), 'execute-api:ManageConnections')
        .flatMap((s) => strings(s.Resource))
        .filter((p) => p.includes('@connections'))
        .map((p) => p.split('/')[2])
        .sort();
    assert.deepEqual(methods('send-message'), ['DELETE', 'POST']);
    assert.deepEqual(methods('stream-out'), ['DELETE', 'POST']);
    assert.deepEqual(methods('run-turn'), ['POST']);
    // No function keeps Lambda's default AWSLambdaBasicExecutionRole (logs:* on every group).
    for (const name of FUNCTION_NAMES) {
      const role = template.toJSON().Resources[functions[name].Properties.Role['Fn::GetAtt'][0]];
      assert.equal(role.Properties.ManagedPolicyArns, undefined, name);
    }
  });

  it('puts the web app in a private bucket behind CloudFront with origin access control', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
    });
    template.resourceCountIs('AWS::CloudFront::OriginAccessControl', 1);
    template.hasResourceProperties('AWS::CloudFront::Distribution', {
      DistributionConfig: Match.objectLike({
        DefaultRootObject: 'index.html',
        CustomErrorResponses: Match.arrayWith([Match.objectLike({ ErrorCode: 404, ResponsePagePath: '/index.html', ResponseCode: 200 })]),
      }),
    });
    const deployment = resources('Custom::CDKBucketDeployment')[0];
    assert.equal(deployment.Properties.SourceObjectKeys.length, 2, 'the page and its config.json');
    const markers = JSON.stringify(deployment.Properties.SourceMarkers);
    assert.ok(markers.includes('WebSocketApi') && markers.includes('HttpApi'), 'config.json holds the WebSocket and API URLs');
  });

  it('alarms on what users feel, through a topic CloudWatch can publish to', () => {
    const [topicId, topic] = resourcesOf(template, 'AWS::SNS::Topic')[0];
    assert.equal(typeof topic.Properties.KmsMasterKeyId, 'object', 'a key of this stack, not alias/aws/sns');
    const keyId = topic.Properties.KmsMasterKeyId['Fn::GetAtt'][0];
    const key = template.toJSON().Resources[keyId];
    assert.equal(key.Type, 'AWS::KMS::Key');
    assert.equal(key.Properties.EnableKeyRotation, true);
    const forCloudWatch = key.Properties.KeyPolicy.Statement.find((s: any) => s.Principal?.Service === 'cloudwatch.amazonaws.com');
    assert.ok(forCloudWatch, 'CloudWatch may use the key');
    assert.deepEqual(new Set([forCloudWatch.Action].flat()), new Set(['kms:Decrypt', 'kms:GenerateDataKey*']));

    const alarms = resources('AWS::CloudWatch::Alarm');
    for (const a of alarms) assert.deepEqual(a.Properties.AlarmActions, [{ Ref: topicId }]);
    const on = (metric: string, queueId?: string) =>
      alarms.filter((a) => a.Properties.MetricName === metric && (!queueId || JSON.stringify(a.Properties.Dimensions).includes(queueId)));
    const queues = resourcesOf(template, 'AWS::SQS::Queue');
    const [turnsId] = queues.find(([, q]) => q.Properties.RedrivePolicy)!;
    const [deadLettersId] = queues.find(([, q]) => !q.Properties.RedrivePolicy)!;
    // run-turn drains the dead-letter queue at once: the visible count would never move.
    assert.equal(on('NumberOfMessagesReceived', deadLettersId).length, 1, 'dead letters received');
    assert.equal(on('ApproximateNumberOfMessagesVisible').length, 0);
    const oldest = on('ApproximateAgeOfOldestMessage', turnsId);
    assert.equal(oldest.length, 1, 'age of the oldest turn job');
    assert.ok(oldest[0].Properties.Threshold >= 900, 'no turn runs longer than 15 minutes');
    assert.equal(on('Errors').length, 5);
    assert.equal(on('Throttles').length, 5);
    const p99 = on('Duration');
    assert.equal(p99.length, 5);
    for (const a of p99) assert.equal(a.Properties.ExtendedStatistic, 'p99');
    const posts = on('ConnectionPostFailures');
    assert.equal(posts.length, 1, '@connections post failures');
    const filters = resources('AWS::Logs::MetricFilter');
    assert.equal(filters.length, 3, 'send-message, stream-out and run-turn post frames');
    for (const f of filters) {
      assert.equal(f.Properties.MetricTransformations[0].MetricName, 'ConnectionPostFailures');
      assert.match(f.Properties.FilterPattern, /\$\.fields\.message = "post\*failed"/);
    }
    assert.ok(on('5xx').length + on('5XXError').length + on('5xxError').length >= 1);
    const outputs = Object.keys(template.toJSON().Outputs);
    for (const name of ['PageUrl', 'WebSocketUrl', 'ApiUrl']) assert.ok(outputs.includes(name), name);
  });

  it('passes cdk-nag AwsSolutions, with every suppression on named resources and wildcards named exactly', () => {
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    assert.deepEqual(errors.map((e) => e.entry.data), []);
    const warnings = Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    assert.deepEqual(warnings.map((e) => e.entry.data), []);
    const json = template.toJSON();
    assert.equal(json.Metadata?.cdk_nag, undefined, 'no stack-wide suppression');
    const suppressions = Object.values(json.Resources as Record<string, any>).flatMap((r) => r.Metadata?.cdk_nag?.rules_to_suppress ?? []);
    assert.ok(suppressions.length > 0);
    for (const s of suppressions) {
      assert.ok(s.reason.length > 30, `a reason for ${s.id}`);
      if (s.id === 'AwsSolutions-IAM4' || s.id === 'AwsSolutions-IAM5') assert.ok(s.applies_to?.length > 0, `${s.id} names what it allows`);
    }
  });
});
