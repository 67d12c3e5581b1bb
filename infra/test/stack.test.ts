// The stack synthesised offline (no credentials, placeholder function and web assets), with its
// resources, their key properties, least-privilege IAM and cdk-nag's AwsSolutions checks asserted.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as cdk from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import { AwsSolutionsChecks } from 'cdk-nag';
import { placeholderFunctionAssets, placeholderWebDist } from '../lib/assets.js';
import { ChatrunStack } from '../lib/chatrun-stack.js';

function synth(extra: Partial<ConstructorParameters<typeof ChatrunStack>[2]> = {}) {
  const app = new cdk.App();
  const stack = new ChatrunStack(app, 'Test', {
    repoRoot: '/nonexistent',
    functionAssets: placeholderFunctionAssets(),
    webDist: placeholderWebDist(),
    deletionProtection: true,
    modelApiKeySecretName: 'chatrun/openai',
    env: { account: '123456789012', region: 'eu-west-1' },
    ...extra,
  });
  cdk.Aspects.of(app).add(new AwsSolutionsChecks());
  app.synth();
  return { stack, template: Template.fromStack(stack) };
}

const { stack, template } = synth();
const resources = (type: string) => Object.values(template.findResources(type)) as any[];

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

  it('queues turns in a FIFO queue with a dead-letter queue after 3 receives', () => {
    const queues = resources('AWS::SQS::Queue');
    assert.equal(queues.length, 2);
    for (const q of queues) assert.equal(q.Properties.FifoQueue, true);
    const turns = queues.find((q) => q.Properties.RedrivePolicy);
    assert.equal(turns.Properties.RedrivePolicy.maxReceiveCount, 3);
    const runTurn = resources('AWS::Lambda::Function').find((f) => f.Properties.Description === 'chatrun run-turn');
    assert.ok(turns.Properties.VisibilityTimeout >= 6 * runTurn.Properties.Timeout, 'visibility >= 6x run-turn timeout');
    const mappings = resources('AWS::Lambda::EventSourceMapping');
    assert.equal(mappings.length, 2, 'the turn queue and its dead-letter queue');
    for (const m of mappings) {
      assert.deepEqual(m.Properties.FunctionResponseTypes, ['ReportBatchItemFailures']);
      assert.equal(m.Properties.BatchSize, 10);
    }
    for (const policy of resources('AWS::SQS::QueuePolicy')) {
      assert.ok(JSON.stringify(policy).includes('aws:SecureTransport'), 'SSL enforced');
    }
  });

  it('runs five arm64 Rust functions with logs retained and no secret in their environment', () => {
    const functions = resources('AWS::Lambda::Function').filter((f) => String(f.Properties.Description).startsWith('chatrun '));
    assert.deepEqual(functions.map((f) => f.Properties.Description).sort(), ['chatrun api', 'chatrun connect', 'chatrun run-turn', 'chatrun send-message', 'chatrun stream-out']);
    for (const f of functions) {
      assert.deepEqual(f.Properties.Architectures, ['arm64']);
      assert.equal(f.Properties.Runtime, 'provided.al2023');
      const env = f.Properties.Environment.Variables;
      for (const forbidden of ['CHAT_TOKEN_SECRET', 'OPENAI_API_KEY', 'ANTHROPIC_API_KEY']) assert.equal(env[forbidden], undefined);
      assert.ok(env.CHAT_TOKEN_SECRET_ARN, 'the token secret is read from Secrets Manager');
      assert.ok(env.CHAT_TABLE_NAME);
      assert.ok(env.CHAT_WS_MANAGEMENT_ENDPOINT);
    }
    template.hasResourceProperties('AWS::SecretsManager::Secret', { GenerateSecretString: Match.objectLike({ PasswordLength: 48 }) });
    const logGroups = resources('AWS::Logs::LogGroup');
    assert.ok(logGroups.length >= 7);
    for (const g of logGroups) assert.equal(g.Properties.RetentionInDays, 30);
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

  it('grants least privilege: ManageConnections on this stage only, no * actions or resources', () => {
    const policies = resources('AWS::IAM::Policy');
    const statements = policies.flatMap((p) => p.Properties.PolicyDocument.Statement);
    const manage = statements.filter((s) => [s.Action].flat().includes('execute-api:ManageConnections'));
    assert.equal(manage.length, 3, 'send-message, run-turn and stream-out post frames');
    for (const s of manage) {
      const resource = JSON.stringify(s.Resource);
      assert.ok(resource.includes('/live/') && resource.includes('@connections'), resource);
    }
    for (const s of statements) {
      for (const action of [s.Action].flat()) assert.notEqual(action, '*', JSON.stringify(s));
      const resource = [s.Resource].flat();
      // CDK's BucketDeployment invalidates CloudFront, an action IAM cannot scope to a resource.
      const isDeploymentHelper = [s.Action].flat().every((a: string) => a.startsWith('cloudfront:') && a.endsWith('Invalidation'));
      if (!isDeploymentHelper) assert.ok(!resource.includes('*'), `resource * in ${JSON.stringify(s)}`);
    }
    const sendQueue = statements.filter((s) => [s.Action].flat().includes('sqs:SendMessage'));
    assert.equal(sendQueue.length, 1, 'only send-message enqueues turns');
    const secretReads = statements.filter((s) => [s.Action].flat().includes('secretsmanager:GetSecretValue'));
    assert.equal(secretReads.length, 5 + 2, 'every function reads the token secret; run-turn and api the model key');
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

  it('alarms on dead letters, function errors and throttles, and API errors, and outputs the URLs', () => {
    const alarms = resources('AWS::CloudWatch::Alarm');
    const metrics = alarms.map((a) => a.Properties.MetricName);
    assert.ok(metrics.includes('ApproximateNumberOfMessagesVisible'));
    assert.equal(metrics.filter((m) => m === 'Errors').length, 5);
    assert.equal(metrics.filter((m) => m === 'Throttles').length, 5);
    assert.ok(metrics.includes('5xx') || metrics.includes('5XXError') || metrics.includes('5xxError'), metrics.join(','));
    for (const a of alarms) assert.equal(a.Properties.AlarmActions.length, 1);
    const outputs = Object.keys(template.toJSON().Outputs);
    for (const name of ['PageUrl', 'WebSocketUrl', 'ApiUrl']) assert.ok(outputs.includes(name), name);
  });

  it('passes cdk-nag AwsSolutions (each suppression states its reason)', () => {
    const errors = Annotations.fromStack(stack).findError('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    assert.deepEqual(errors.map((e) => e.entry.data), []);
    const warnings = Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('AwsSolutions-.*'));
    assert.deepEqual(warnings.map((e) => e.entry.data), []);
  });
});
