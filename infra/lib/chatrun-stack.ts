// The whole of chatrun on AWS: WebSocket and HTTP APIs, five Rust functions, the FIFO turn queue
// with its dead-letter queue, the single DynamoDB table, secrets, the web app behind CloudFront,
// and the alarms that say when users are affected.
import { join } from 'node:path';
import * as cdk from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigateway';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpLambdaIntegration, WebSocketLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as cloudfront from 'aws-cdk-lib/aws-cloudfront';
import * as origins from 'aws-cdk-lib/aws-cloudfront-origins';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { SqsEventSource } from 'aws-cdk-lib/aws-lambda-event-sources';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as s3deploy from 'aws-cdk-lib/aws-s3-deployment';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { RustFunction } from 'cargo-lambda-cdk';
import { NagSuppressions } from 'cdk-nag';
import type { Construct, IConstruct } from 'constructs';

export const FUNCTION_NAMES = ['connect', 'send-message', 'run-turn', 'stream-out', 'api'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

/**
 * Where the function code comes from.
 * - `cargo-lambda`: built during synth by cargo-lambda-cdk's `RustFunction` (arm64, profile
 *   `lambda`), so a deploy always ships what it built. The default.
 * - `prebuilt`: a directory of `{name}/bootstrap` built beforehand; the app checks each is an
 *   aarch64 release build before using it (lib/bootstraps.ts).
 * - `placeholder`: stand-ins that cannot run, for tests and offline synth only.
 */
export type FunctionCode = { kind: 'cargo-lambda' } | { kind: 'prebuilt'; dir: string } | { kind: 'placeholder'; dir: string };

export interface ChatrunStackProps extends cdk.StackProps {
  /** The repository root (Cargo.toml). */
  readonly repoRoot: string;
  readonly functionCode: FunctionCode;
  /** The built web app (web/dist). */
  readonly webDist: string;
  /** Secrets Manager secret holding the model API key; the offline model answers without one. */
  readonly modelApiKeySecretName?: string;
  readonly chatModel?: string;
  /** More models users may pick besides `chatModel`, served by the same provider (`CHAT_MODELS`). */
  readonly chatModels?: string[];
  readonly openAiBaseUrl?: string;
  readonly deletionProtection: boolean;
  readonly alarmEmail?: string;
  /**
   * Create the account's API Gateway CloudWatch Logs role (`AWS::ApiGateway::Account`), which a
   * WebSocket stage with access logs needs. Default true; false where the account manages it.
   */
  readonly manageApiGatewayAccount?: boolean;
  /** The most run-turn invocations the turn queue drives at once (each runs up to a batch). */
  readonly turnConcurrency?: number;
}

/**
 * The turn pipeline's numbers, chosen together (infra/README.md, "The turn queue"):
 * a turn may stream for up to Lambda's 15 minutes; the queue's own visibility timeout must be
 * at least that (AWS refuses the mapping otherwise), while run-turn's heartbeat keeps each job
 * it works on visible again within `CHAT_TURN_LEASE_SECS` after a crash.
 */
export const TURN_PIPELINE = {
  runTurnTimeout: cdk.Duration.minutes(15),
  runTurnMemoryMb: 1024,
  /** SQS FIFO's largest batch; the chats of a batch run concurrently. */
  batchSize: 10,
  /** Receives of a job (first try included) before it is dead-lettered. */
  maxReceiveCount: 5,
  turnConcurrency: 20,
  /** How long run-turn holds a job between heartbeats' renewals (its lease). */
  leaseSeconds: 45,
} as const;

/**
 * run-turn's frame cadence (crates/core/src/config.rs, `FrameCadence`): every frame costs a
 * DynamoDB write, a read and an API Gateway message, so after the first second of a reply at 50 ms
 * the frames widen to 500 ms, and the page smooths them into a steady reveal. Measured in
 * BENCHMARKS.md ("The AWS cost of a turn"): $0.14 per 1,000 500-token turns (ten turns per
 * invocation) instead of $0.50 at a fixed 50 ms.
 */
export const FRAME_CADENCE = {
  intervalMs: 50,
  maxIntervalMs: 500,
  rampMs: 1000,
} as const;

/** The table actions each function's code paths use (crates/aws/src/dynamo.rs by store method). */
const TABLE_ACTIONS: Record<FunctionName, string[]> = {
  // $connect writes the connection; $disconnect queries the connection's partition (the
  // connection and its subscriptions, crates/aws/src/dynamo.rs `delete_connection`) and deletes it.
  connect: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:BatchWriteItem'],
  'send-message': ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:BatchWriteItem'],
  'run-turn': ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:BatchWriteItem'],
  'stream-out': ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:BatchWriteItem'],
  api: ['dynamodb:GetItem', 'dynamodb:Query', 'dynamodb:PutItem', 'dynamodb:UpdateItem', 'dynamodb:BatchWriteItem'],
};

export class ChatrunStack extends cdk.Stack {
  constructor(scope: Construct, id: string, props: ChatrunStackProps) {
    super(scope, id, props);
    const retain = props.deletionProtection ? cdk.RemovalPolicy.RETAIN : cdk.RemovalPolicy.DESTROY;
    const pipeline = { ...TURN_PIPELINE, turnConcurrency: props.turnConcurrency ?? TURN_PIPELINE.turnConcurrency };

    // ---- data ----
    const table = new dynamodb.Table(this, 'Table', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      timeToLiveAttribute: 'expiresAt',
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: props.deletionProtection,
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      removalPolicy: retain,
    });
    const byOwner = 'byOwner';
    table.addGlobalSecondaryIndex({
      indexName: byOwner,
      partitionKey: { name: 'gsi1pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'gsi1sk', type: dynamodb.AttributeType.STRING },
    });

    // Both queues: visibility at least run-turn's timeout (AWS requires it of a Lambda event
    // source); run-turn's heartbeat, not this, decides how soon a crashed turn comes back.
    const deadLetters = new sqs.Queue(this, 'TurnsDeadLetters', {
      fifo: true,
      visibilityTimeout: pipeline.runTurnTimeout,
      retentionPeriod: cdk.Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    const turns = new sqs.Queue(this, 'Turns', {
      fifo: true,
      contentBasedDeduplication: false,
      visibilityTimeout: pipeline.runTurnTimeout,
      deadLetterQueue: { queue: deadLetters, maxReceiveCount: pipeline.maxReceiveCount },
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });

    // ---- secrets: never in plain environment variables ----
    const tokenSecret = new secretsmanager.Secret(this, 'TokenSecret', {
      description: 'chatrun: HS256 key of user and access tokens',
      generateSecretString: { passwordLength: 48, excludePunctuation: true },
      removalPolicy: retain,
    });
    const modelKey = props.modelApiKeySecretName
      ? secretsmanager.Secret.fromSecretNameV2(this, 'ModelApiKey', props.modelApiKeySecretName)
      : undefined;

    // ---- APIs ----
    const webSocketApi = new apigwv2.WebSocketApi(this, 'WebSocketApi', {
      routeSelectionExpression: '$request.body.action',
    });
    const stageName = 'live';
    const managementEndpoint = `https://${webSocketApi.apiId}.execute-api.${this.region}.${this.urlSuffix}/${stageName}`;

    // ---- functions ----
    const common: Record<string, string> = {
      CHAT_TABLE_NAME: table.tableName,
      CHAT_TOKEN_SECRET_ARN: tokenSecret.secretArn,
      RUST_LOG: 'info',
    };
    const modelEnv: Record<string, string> = {};
    if (props.chatModel) modelEnv.CHAT_MODEL = props.chatModel;
    if (props.chatModels?.length) modelEnv.CHAT_MODELS = props.chatModels.join(',');
    if (props.openAiBaseUrl) modelEnv.OPENAI_BASE_URL = props.openAiBaseUrl;
    if (modelKey) modelEnv.CHAT_MODEL_API_KEY_SECRET_ARN = modelKey.secretArn;

    const logGroups: Partial<Record<FunctionName, logs.LogGroup>> = {};
    const fn = (name: FunctionName, timeout: cdk.Duration, memorySize: number, extra: Record<string, string> = {}) => {
      const logGroup = new logs.LogGroup(this, `${pascal(name)}Logs`, {
        retention: logs.RetentionDays.ONE_MONTH,
        removalPolicy: cdk.RemovalPolicy.DESTROY,
      });
      logGroups[name] = logGroup;
      // Its own role: no AWSLambdaBasicExecutionRole (logs:* on every group), only its own logs.
      const role = new iam.Role(this, `${pascal(name)}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        description: `chatrun ${name}`,
      });
      role.addToPolicy(
        new iam.PolicyStatement({ actions: ['logs:CreateLogStream', 'logs:PutLogEvents'], resources: [logGroup.logGroupArn] }),
      );
      const options = {
        architecture: lambda.Architecture.ARM_64,
        timeout,
        memorySize,
        logGroup,
        role,
        environment: { ...common, ...extra },
        description: `chatrun ${name}`,
      };
      const code = props.functionCode;
      const f =
        code.kind === 'cargo-lambda'
          ? new RustFunction(this, pascal(name), {
              ...options,
              manifestPath: join(props.repoRoot, 'Cargo.toml'),
              binaryName: name,
              bundling: { profile: 'lambda', cargoLambdaFlags: ['--features', `chatrun-${name}/lambda`] },
            })
          : new lambda.Function(this, pascal(name), {
              ...options,
              runtime: lambda.Runtime.PROVIDED_AL2023,
              handler: 'bootstrap',
              code: lambda.Code.fromAsset(join(code.dir, name)),
            });
      f.addToRolePolicy(
        new iam.PolicyStatement({
          actions: TABLE_ACTIONS[name],
          // Only api lists a user's chats, the one read of the byOwner index.
          resources: name === 'api' ? [table.tableArn, `${table.tableArn}/index/${byOwner}`] : [table.tableArn],
        }),
      );
      f.addToRolePolicy(new iam.PolicyStatement({ actions: ['secretsmanager:GetSecretValue'], resources: [tokenSecret.secretArn] }));
      return f;
    };

    const ws = { CHAT_WS_MANAGEMENT_ENDPOINT: managementEndpoint };
    const connect = fn('connect', cdk.Duration.seconds(10), 256);
    // send-message refuses a model the provider does not offer: it reads the model list (and the
    // key secret's ARN, which names the provider), never the key itself.
    const sendMessage = fn('send-message', cdk.Duration.seconds(20), 256, { ...ws, ...modelEnv, CHAT_TURN_QUEUE_URL: turns.queueUrl });
    const streamOut = fn('stream-out', cdk.Duration.seconds(29), 256, ws);
    const runTurn = fn('run-turn', pipeline.runTurnTimeout, pipeline.runTurnMemoryMb, {
      ...ws,
      ...modelEnv,
      CHAT_TURN_QUEUE_URL: turns.queueUrl,
      CHAT_DEAD_LETTER_QUEUE_URL: deadLetters.queueUrl,
      CHAT_DEAD_LETTER_QUEUE_ARN: deadLetters.queueArn,
      CHAT_TURN_LEASE_SECS: String(pipeline.leaseSeconds),
      CHAT_MAX_RECEIVES: String(pipeline.maxReceiveCount),
      CHAT_FRAME_INTERVAL_MS: String(FRAME_CADENCE.intervalMs),
      CHAT_FRAME_INTERVAL_MAX_MS: String(FRAME_CADENCE.maxIntervalMs),
      CHAT_FRAME_RAMP_MS: String(FRAME_CADENCE.rampMs),
    });
    const api = fn('api', cdk.Duration.seconds(20), 256, modelEnv);
    const functions: Record<FunctionName, lambda.Function> = { connect, 'send-message': sendMessage, 'run-turn': runTurn, 'stream-out': streamOut, api };

    sendMessage.addToRolePolicy(new iam.PolicyStatement({ actions: ['sqs:SendMessage'], resources: [turns.queueArn] }));
    if (modelKey) {
      // Only run-turn calls the model; api lists the models without the key.
      for (const f of [runTurn]) {
        // The ARN of a secret named without its random suffix ends in `-??????` (six characters).
        f.addToRolePolicy(new iam.PolicyStatement({ actions: ['secretsmanager:GetSecretValue'], resources: [`${modelKey.secretArn}-??????`] }));
      }
    }
    // The event sources grant receive and delete; run-turn also holds and backs off jobs itself.
    runTurn.addToRolePolicy(
      new iam.PolicyStatement({ actions: ['sqs:ChangeMessageVisibility'], resources: [turns.queueArn, deadLetters.queueArn] }),
    );
    // FIFO queues take no batching window: a batch is what is visible when Lambda polls.
    runTurn.addEventSource(
      new SqsEventSource(turns, { batchSize: pipeline.batchSize, reportBatchItemFailures: true, maxConcurrency: pipeline.turnConcurrency }),
    );
    // Dead letters go to run-turn too: it tells the user the turn failed and ends the session.
    runTurn.addEventSource(new SqsEventSource(deadLetters, { batchSize: pipeline.batchSize, reportBatchItemFailures: true, maxConcurrency: 2 }));

    // ---- WebSocket routes ----
    webSocketApi.addRoute('$connect', { integration: new WebSocketLambdaIntegration('ConnectIntegration', connect) });
    webSocketApi.addRoute('$disconnect', {
      integration: new WebSocketLambdaIntegration('DisconnectIntegration', connect),
    });
    // Not 'Default': CDK drops that id from logical ids and synth fails (TOOLCHAIN.md).
    webSocketApi.addRoute('$default', { integration: new WebSocketLambdaIntegration('FallbackIntegration', streamOut) });
    const sendIntegration = new WebSocketLambdaIntegration('SendMessageIntegration', sendMessage);
    const streamIntegration = new WebSocketLambdaIntegration('StreamOutIntegration', streamOut);
    webSocketApi.addRoute('send-message', { integration: sendIntegration });
    webSocketApi.addRoute('stop', { integration: sendIntegration });
    for (const route of ['resume', 'unsubscribe', 'ping']) webSocketApi.addRoute(route, { integration: streamIntegration });

    const stage = new apigwv2.WebSocketStage(this, 'WebSocketStage', {
      webSocketApi,
      stageName,
      autoDeploy: true,
      throttle: { rateLimit: 500, burstLimit: 1000 },
    });
    // @connections on this stage only: POST a frame; DELETE closes a connection that broke the
    // protocol (send-message and stream-out answer client frames; run-turn only posts).
    const connectionsArn = (method: string) =>
      this.formatArn({ service: 'execute-api', resource: webSocketApi.apiId, resourceName: `${stageName}/${method}/@connections/*` });
    for (const [f, methods] of [
      [sendMessage, ['POST', 'DELETE']],
      [streamOut, ['POST', 'DELETE']],
      [runTurn, ['POST']],
    ] as const) {
      f.addToRolePolicy(new iam.PolicyStatement({ actions: ['execute-api:ManageConnections'], resources: methods.map(connectionsArn) }));
    }
    const wsAccessLogs = new logs.LogGroup(this, 'WebSocketAccessLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: cdk.RemovalPolicy.DESTROY,
    });
    const cfnStage = stage.node.defaultChild as apigwv2.CfnStage;
    cfnStage.accessLogSettings = {
      destinationArn: wsAccessLogs.logGroupArn,
      format: JSON.stringify({ requestId: '$context.requestId', routeKey: '$context.routeKey', status: '$context.status', connectionId: '$context.connectionId', error: '$context.error.message' }),
    };
    if (props.manageApiGatewayAccount ?? true) {
      // A WebSocket stage with access logs fails to create in an account/region where API
      // Gateway has no CloudWatch Logs role yet. The role and setting are account-wide, so they
      // are kept when the stack goes: other APIs of the account may log through them by then.
      const apiGatewayLogsRole = new iam.Role(this, 'ApiGatewayCloudWatchRole', {
        assumedBy: new iam.ServicePrincipal('apigateway.amazonaws.com'),
        managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AmazonAPIGatewayPushToCloudWatchLogs')],
      });
      apiGatewayLogsRole.applyRemovalPolicy(cdk.RemovalPolicy.RETAIN);
      const account = new apigw.CfnAccount(this, 'ApiGatewayAccount', { cloudWatchRoleArn: apiGatewayLogsRole.roleArn });
      account.applyRemovalPolicy(cdk.RemovalPolicy.RETAIN);
      cfnStage.node.addDependency(account);
      NagSuppressions.addResourceSuppressions(apiGatewayLogsRole, [
        {
          id: 'AwsSolutions-IAM4',
          reason: 'API Gateway\'s account-wide logging role: AWS documents this managed policy for it, and it must reach every log group API Gateway creates for the account.',
          appliesTo: ['Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs'],
        },
      ]);
    }

    // ---- web app ----
    const webBucket = new s3.Bucket(this, 'WebBucket', {
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      removalPolicy: cdk.RemovalPolicy.DESTROY,
      autoDeleteObjects: true,
    });
    const distribution = new cloudfront.Distribution(this, 'Web', {
      defaultBehavior: {
        origin: origins.S3BucketOrigin.withOriginAccessControl(webBucket),
        viewerProtocolPolicy: cloudfront.ViewerProtocolPolicy.REDIRECT_TO_HTTPS,
      },
      defaultRootObject: 'index.html',
      // Client-side routes (/c/{chatId}) load the app, which reads the chat itself.
      errorResponses: [403, 404].map((httpStatus) => ({
        httpStatus,
        responseHttpStatus: 200,
        responsePagePath: '/index.html',
        ttl: cdk.Duration.seconds(0),
      })),
    });
    const webOrigin = `https://${distribution.distributionDomainName}`;

    const httpApi = new apigwv2.HttpApi(this, 'HttpApi', {
      corsPreflight: {
        allowOrigins: [webOrigin],
        allowMethods: [apigwv2.CorsHttpMethod.GET, apigwv2.CorsHttpMethod.POST, apigwv2.CorsHttpMethod.PATCH, apigwv2.CorsHttpMethod.DELETE],
        allowHeaders: ['authorization', 'content-type'],
        maxAge: cdk.Duration.hours(1),
      },
    });
    const apiRoutes = httpApi.addRoutes({
      path: '/api/{proxy+}',
      methods: [apigwv2.HttpMethod.GET, apigwv2.HttpMethod.POST, apigwv2.HttpMethod.PATCH, apigwv2.HttpMethod.DELETE],
      integration: new HttpLambdaIntegration('ApiIntegration', api),
    });
    const httpStage = httpApi.defaultStage!.node.defaultChild as apigwv2.CfnStage;
    httpStage.defaultRouteSettings = { throttlingRateLimit: 200, throttlingBurstLimit: 400 };
    const httpAccessLogs = new logs.LogGroup(this, 'HttpAccessLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: cdk.RemovalPolicy.DESTROY,
    });
    httpStage.accessLogSettings = {
      destinationArn: httpAccessLogs.logGroupArn,
      format: JSON.stringify({ requestId: '$context.requestId', route: '$context.routeKey', status: '$context.status', latency: '$context.responseLatency' }),
    };

    const webDeployment = new s3deploy.BucketDeployment(this, 'WebDeployment', {
      destinationBucket: webBucket,
      distribution,
      sources: [
        s3deploy.Source.asset(props.webDist),
        // Read by the page at start-up: where its APIs are.
        s3deploy.Source.jsonData('config.json', { wsUrl: stage.url, apiUrl: httpApi.apiEndpoint }),
      ],
    });

    // ---- operations ----
    // CloudWatch cannot publish to a topic under the AWS-managed alias/aws/sns key: this key's
    // policy lets it.
    const alarmsKey = new kms.Key(this, 'AlarmsKey', {
      description: 'chatrun: encrypts the alarm topic; CloudWatch may use it to publish',
      enableKeyRotation: true,
      removalPolicy: cdk.RemovalPolicy.DESTROY,
      pendingWindow: cdk.Duration.days(7),
    });
    alarmsKey.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
        conditions: { StringEquals: { 'aws:SourceAccount': this.account } },
      }),
    );
    const alarms = new sns.Topic(this, 'Alarms', { enforceSSL: true, masterKey: alarmsKey });
    if (props.alarmEmail) {
      new sns.Subscription(this, 'AlarmEmail', { topic: alarms, protocol: sns.SubscriptionProtocol.EMAIL, endpoint: props.alarmEmail });
    }
    const alarm = (id: string, metric: cloudwatch.IMetric, description: string, threshold = 0, evaluationPeriods = 1) =>
      new cloudwatch.Alarm(this, id, {
        metric,
        threshold,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmDescription: description,
      }).addAlarmAction(new cwActions.SnsAction(alarms));
    const minute = cdk.Duration.minutes(1);
    const fiveMinutes = cdk.Duration.minutes(5);
    // run-turn drains the dead-letter queue at once, so its visible count stays at zero:
    // receives are what says a turn died.
    alarm('DeadLettersAlarm', deadLetters.metricNumberOfMessagesReceived({ period: minute, statistic: 'Sum' }), 'Turns failed for good: users saw an error and their session ended.');
    alarm(
      'OldestTurnAlarm',
      turns.metricApproximateAgeOfOldestMessage({ period: minute, statistic: 'Maximum' }),
      'A turn job has waited longer than any turn may run: turns are not being picked up (throttled, failing at cold start, or stuck).',
      pipeline.runTurnTimeout.toSeconds() + 60,
    );
    for (const [name, f] of Object.entries(functions)) {
      alarm(`${pascal(name)}ErrorsAlarm`, f.metricErrors({ period: fiveMinutes }), `${name} is failing.`);
      alarm(`${pascal(name)}ThrottlesAlarm`, f.metricThrottles({ period: fiveMinutes }), `${name} is throttled.`);
      // Interactive functions answer within a few seconds; run-turn near its cap loses turns.
      const slow = name === 'run-turn' ? pipeline.runTurnTimeout.toMilliseconds() * 0.8 : 3000;
      alarm(`${pascal(name)}P99DurationAlarm`, f.metricDuration({ period: fiveMinutes, statistic: 'p99' }), `${name} is slow (p99 over ${slow} ms).`, slow, 3);
    }
    // The engine logs `post failed` / `post to subscriber failed` (JSON, level WARN) when
    // @connections refuses a frame for another reason than a closed connection.
    const postFailures = new cloudwatch.Metric({ namespace: 'chatrun', metricName: 'ConnectionPostFailures', statistic: 'Sum', period: fiveMinutes });
    for (const name of ['send-message', 'stream-out', 'run-turn'] as const) {
      logGroups[name]!.addMetricFilter(`${pascal(name)}PostFailures`, {
        filterPattern: logs.FilterPattern.literal('{ ($.level = "WARN") && ($.fields.message = "post*failed") }'),
        metricNamespace: postFailures.namespace,
        metricName: postFailures.metricName,
        metricValue: '1',
        defaultValue: 0,
      });
    }
    alarm('ConnectionPostFailuresAlarm', postFailures, 'Frames could not be posted to connected clients (@connections throttled or failing).');
    alarm('HttpApi5xxAlarm', httpApi.metricServerError({ period: fiveMinutes }), 'The HTTP API answers 5xx.');
    alarm(
      'WebSocketErrorsAlarm',
      new cloudwatch.Metric({ namespace: 'AWS/ApiGateway', metricName: 'IntegrationError', dimensionsMap: { ApiId: webSocketApi.apiId, Stage: stageName }, statistic: 'Sum', period: fiveMinutes }),
      'WebSocket route integrations are failing.',
    );

    new cdk.CfnOutput(this, 'PageUrl', { value: webOrigin });
    new cdk.CfnOutput(this, 'WebSocketUrl', { value: stage.url });
    new cdk.CfnOutput(this, 'ApiUrl', { value: httpApi.apiEndpoint });

    this.suppressNagFindings({ functions, tokenSecret, webBucket, distribution, deadLetters, apiRoutes, webSocketApi, webDeployment, connectionsArn });
  }

  /** cdk-nag AwsSolutions findings that are deliberate: each on the resources it concerns, with its reason. */
  private suppressNagFindings(r: {
    functions: Record<FunctionName, lambda.Function>;
    tokenSecret: secretsmanager.Secret;
    webBucket: s3.Bucket;
    distribution: cloudfront.Distribution;
    deadLetters: sqs.Queue;
    apiRoutes: apigwv2.HttpRoute[];
    webSocketApi: apigwv2.WebSocketApi;
    webDeployment: s3deploy.BucketDeployment;
    connectionsArn: (method: string) => string;
  }) {
    const stack = cdk.Stack.of(this);
    const resolvedArn = (arn: string) => {
      // cdk-nag names a resource by its ARN with each token rendered as `<Logical.Attr>`.
      const parts = stack.resolve(arn);
      if (typeof parts === 'string') return parts;
      return (parts['Fn::Join'][1] as unknown[])
        .map((p) => (typeof p === 'string' ? p : 'Ref' in (p as object) ? `<${(p as { Ref: string }).Ref}>` : `<${(p as { 'Fn::GetAtt': string[] })['Fn::GetAtt'].join('.')}>`))
        .join('');
    };
    for (const [name, f] of Object.entries(r.functions)) {
      const wildcards: string[] = [];
      if (name === 'send-message' || name === 'stream-out') wildcards.push(...['POST', 'DELETE'].map((m) => `Resource::${resolvedArn(r.connectionsArn(m))}`));
      if (name === 'run-turn') wildcards.push(`Resource::${resolvedArn(r.connectionsArn('POST'))}`);
      if (wildcards.length > 0) {
        NagSuppressions.addResourceSuppressions(f.role!, [
          { id: 'AwsSolutions-IAM5', reason: 'Connection ids are made by API Gateway per client: @connections can only be scoped to this API, this stage and this method.', appliesTo: wildcards },
        ], true);
      }
    }
    NagSuppressions.addResourceSuppressions(r.tokenSecret, [
      { id: 'AwsSolutions-SMG4', reason: 'Rotating the HS256 token key would sign every user out; rotation is a deliberate operator action, documented in infra/README.md.' },
    ]);
    NagSuppressions.addResourceSuppressions(r.webBucket, [
      { id: 'AwsSolutions-S1', reason: 'The web bucket holds the public build of the page only, served through CloudFront; its reads are in CloudFront\'s metrics.' },
    ]);
    NagSuppressions.addResourceSuppressions(r.distribution, [
      { id: 'AwsSolutions-CFR1', reason: 'A chat app for everyone: no geographic restriction.' },
      { id: 'AwsSolutions-CFR2', reason: 'The distribution serves static files only; the APIs have their own throttling. Add WAF for a public deployment under attack.' },
      { id: 'AwsSolutions-CFR3', reason: 'Static files only; CloudFront standard logs cost an extra bucket and are left to operators who want them.' },
      { id: 'AwsSolutions-CFR4', reason: 'The default *.cloudfront.net certificate cannot pin TLS 1.2; a custom domain with its own certificate (and minimumProtocolVersion TLS_V1_2_2021) does.' },
    ]);
    NagSuppressions.addResourceSuppressions(r.deadLetters, [
      { id: 'AwsSolutions-SQS3', reason: 'The dead-letter queue itself has no dead-letter queue.' },
    ]);
    NagSuppressions.addResourceSuppressions(r.apiRoutes, [
      { id: 'AwsSolutions-APIG4', reason: 'The api function checks the bearer token on every route (a refused token answers 401).' },
    ], true);
    NagSuppressions.addResourceSuppressions(r.webSocketApi, [
      { id: 'AwsSolutions-APIG4', reason: 'The connect function authenticates $connect\'s token query parameter (a refused token answers 401 before the upgrade); later routes act on a connection that passed it.' },
    ], true);
    // CDK's web deployment helper (a singleton function beside the BucketDeployment): its role,
    // policy and runtime are CDK's to choose.
    const helpers: IConstruct[] = [r.webDeployment, ...stack.node.children.filter((c) => c.node.id.startsWith('Custom::CDKBucketDeployment'))];
    for (const helper of helpers) {
      NagSuppressions.addResourceSuppressions(helper, [
        { id: 'AwsSolutions-IAM4', reason: 'CDK\'s web deployment helper runs with AWSLambdaBasicExecutionRole.', appliesTo: ['Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole'] },
        {
          id: 'AwsSolutions-IAM5',
          reason: 'CDK\'s deployment helper copies the page from the asset bucket into this web bucket and invalidates this distribution: object paths are not known in advance, and CloudFront invalidation takes no resource.',
          appliesTo: ['Action::s3:GetObject*', 'Action::s3:GetBucket*', 'Action::s3:List*', 'Action::s3:DeleteObject*', 'Action::s3:Abort*', { regex: '/^Resource::arn:<AWS::Partition>:s3:::cdk-.*-assets-.*\\/\\*$/' }, { regex: '/^Resource::<WebBucket.*\\.Arn>\\/\\*$/' }, 'Resource::*'],
        },
        { id: 'AwsSolutions-L1', reason: 'CDK\'s web deployment helper picks its own runtime.' },
      ], true);
    }
  }
}

function pascal(name: string) {
  return name.replace(/(^|-)(\w)/g, (_, __, c: string) => c.toUpperCase());
}

