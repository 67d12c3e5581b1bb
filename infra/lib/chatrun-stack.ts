// The whole of chatrun on AWS: WebSocket and HTTP APIs, five Rust functions, the FIFO turn queue
// with its dead-letter queue, the single DynamoDB table, secrets, the web app behind CloudFront,
// and the alarms that say when users are affected.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as cdk from 'aws-cdk-lib';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpLambdaIntegration, WebSocketLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as cloudfront from 'aws-cdk-lib/aws-cloudfront';
import * as origins from 'aws-cdk-lib/aws-cloudfront-origins';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cwActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
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
import type { Construct } from 'constructs';

export const FUNCTION_NAMES = ['connect', 'send-message', 'run-turn', 'stream-out', 'api'] as const;
export type FunctionName = (typeof FUNCTION_NAMES)[number];

export interface ChatrunStackProps extends cdk.StackProps {
  /** The repository root (Cargo.toml, web/dist). */
  readonly repoRoot: string;
  /**
   * Where the function code comes from: `'cargo-lambda'` builds it during synth with
   * cargo-lambda-cdk's RustFunction; a directory holds `{name}/bootstrap` built beforehand
   * (`cargo lambda build --release --arm64`, which leaves them in target/lambda).
   */
  readonly functionAssets: 'cargo-lambda' | string;
  /** The built web app (web/dist). */
  readonly webDist: string;
  /** Secrets Manager secret holding the model API key; the offline model answers without one. */
  readonly modelApiKeySecretName?: string;
  readonly chatModel?: string;
  readonly openAiBaseUrl?: string;
  readonly deletionProtection: boolean;
  readonly alarmEmail?: string;
}

const RUN_TURN_TIMEOUT = cdk.Duration.minutes(15);

export class ChatrunStack extends cdk.Stack {
  constructor(scope: Construct, id: string, props: ChatrunStackProps) {
    super(scope, id, props);
    const retain = props.deletionProtection ? cdk.RemovalPolicy.RETAIN : cdk.RemovalPolicy.DESTROY;

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
    table.addGlobalSecondaryIndex({
      indexName: 'byOwner',
      partitionKey: { name: 'gsi1pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'gsi1sk', type: dynamodb.AttributeType.STRING },
    });

    const deadLetters = new sqs.Queue(this, 'TurnsDeadLetters', {
      fifo: true,
      // run-turn consumes dead letters too.
      visibilityTimeout: cdk.Duration.seconds(RUN_TURN_TIMEOUT.toSeconds() * 6),
      retentionPeriod: cdk.Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
    });
    const turns = new sqs.Queue(this, 'Turns', {
      fifo: true,
      contentBasedDeduplication: false,
      // At least six times run-turn's timeout, so a slow turn is never delivered twice at once.
      visibilityTimeout: cdk.Duration.seconds(RUN_TURN_TIMEOUT.toSeconds() * 6),
      deadLetterQueue: { queue: deadLetters, maxReceiveCount: 3 },
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
      CHAT_WS_MANAGEMENT_ENDPOINT: managementEndpoint,
      RUST_LOG: 'info',
    };
    if (props.chatModel) common.CHAT_MODEL = props.chatModel;
    if (props.openAiBaseUrl) common.OPENAI_BASE_URL = props.openAiBaseUrl;
    if (modelKey) common.CHAT_MODEL_API_KEY_SECRET_ARN = modelKey.secretArn;

    const fn = (name: FunctionName, timeout: cdk.Duration, memorySize: number, extra: Record<string, string> = {}) => {
      const logGroup = new logs.LogGroup(this, `${pascal(name)}Logs`, {
        retention: logs.RetentionDays.ONE_MONTH,
        removalPolicy: cdk.RemovalPolicy.DESTROY,
      });
      const options = {
        architecture: lambda.Architecture.ARM_64,
        timeout,
        memorySize,
        logGroup,
        environment: { ...common, ...extra },
        description: `chatrun ${name}`,
      };
      const f =
        props.functionAssets === 'cargo-lambda'
          ? new RustFunction(this, pascal(name), {
              ...options,
              manifestPath: join(props.repoRoot, 'Cargo.toml'),
              binaryName: name,
              bundling: { cargoLambdaFlags: ['--features', `chatrun-${name}/lambda`] },
            })
          : new lambda.Function(this, pascal(name), {
              ...options,
              runtime: lambda.Runtime.PROVIDED_AL2023,
              handler: 'bootstrap',
              code: lambda.Code.fromAsset(join(props.functionAssets, name)),
            });
      tokenSecret.grantRead(f);
      return f;
    };

    const connect = fn('connect', cdk.Duration.seconds(10), 256);
    const sendMessage = fn('send-message', cdk.Duration.seconds(20), 256, { CHAT_TURN_QUEUE_URL: turns.queueUrl });
    const streamOut = fn('stream-out', cdk.Duration.seconds(29), 256);
    const runTurn = fn('run-turn', RUN_TURN_TIMEOUT, 512, { CHAT_DEAD_LETTER_QUEUE_ARN: deadLetters.queueArn });
    const api = fn('api', cdk.Duration.seconds(20), 256);
    const functions = { connect, 'send-message': sendMessage, 'stream-out': streamOut, 'run-turn': runTurn, api };

    for (const f of Object.values(functions)) table.grantReadWriteData(f);
    turns.grantSendMessages(sendMessage);
    modelKey?.grantRead(runTurn);
    modelKey?.grantRead(api);
    runTurn.addEventSource(new SqsEventSource(turns, { batchSize: 10, reportBatchItemFailures: true }));
    // Dead letters go to run-turn too: it tells the user the turn failed and ends the session.
    runTurn.addEventSource(new SqsEventSource(deadLetters, { batchSize: 10, reportBatchItemFailures: true }));

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
    for (const f of [sendMessage, runTurn, streamOut]) stage.grantManagementApiAccess(f);
    const wsAccessLogs = new logs.LogGroup(this, 'WebSocketAccessLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: cdk.RemovalPolicy.DESTROY,
    });
    (stage.node.defaultChild as apigwv2.CfnStage).accessLogSettings = {
      destinationArn: wsAccessLogs.logGroupArn,
      format: JSON.stringify({ requestId: '$context.requestId', routeKey: '$context.routeKey', status: '$context.status', connectionId: '$context.connectionId', error: '$context.error.message' }),
    };

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
    httpApi.addRoutes({
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

    new s3deploy.BucketDeployment(this, 'WebDeployment', {
      destinationBucket: webBucket,
      distribution,
      sources: [
        s3deploy.Source.asset(props.webDist),
        // Read by the page at start-up: where its APIs are.
        s3deploy.Source.jsonData('config.json', { wsUrl: stage.url, apiUrl: httpApi.apiEndpoint }),
      ],
    });

    // ---- operations ----
    const alarms = new sns.Topic(this, 'Alarms', {
      enforceSSL: true,
      masterKey: kms.Alias.fromAliasName(this, 'SnsKey', 'alias/aws/sns'),
    });
    if (props.alarmEmail) {
      new sns.Subscription(this, 'AlarmEmail', { topic: alarms, protocol: sns.SubscriptionProtocol.EMAIL, endpoint: props.alarmEmail });
    }
    const alarm = (id: string, metric: cloudwatch.IMetric, description: string) =>
      new cloudwatch.Alarm(this, id, {
        metric,
        threshold: 0,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        evaluationPeriods: 1,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        alarmDescription: description,
      }).addAlarmAction(new cwActions.SnsAction(alarms));
    alarm('DeadLettersAlarm', deadLetters.metricApproximateNumberOfMessagesVisible({ period: cdk.Duration.minutes(1) }), 'Turns are failing: users see an error and their session ends.');
    for (const [name, f] of Object.entries(functions)) {
      alarm(`${pascal(name)}ErrorsAlarm`, f.metricErrors({ period: cdk.Duration.minutes(5) }), `${name} is failing.`);
      alarm(`${pascal(name)}ThrottlesAlarm`, f.metricThrottles({ period: cdk.Duration.minutes(5) }), `${name} is throttled.`);
    }
    alarm('HttpApi5xxAlarm', httpApi.metricServerError({ period: cdk.Duration.minutes(5) }), 'The HTTP API answers 5xx.');
    alarm(
      'WebSocketErrorsAlarm',
      new cloudwatch.Metric({ namespace: 'AWS/ApiGateway', metricName: 'IntegrationError', dimensionsMap: { ApiId: webSocketApi.apiId, Stage: stageName }, statistic: 'Sum', period: cdk.Duration.minutes(5) }),
      'WebSocket route integrations are failing.',
    );

    new cdk.CfnOutput(this, 'PageUrl', { value: webOrigin });
    new cdk.CfnOutput(this, 'WebSocketUrl', { value: stage.url });
    new cdk.CfnOutput(this, 'ApiUrl', { value: httpApi.apiEndpoint });

    this.suppressNagFindings();
  }

  /** cdk-nag AwsSolutions findings that are deliberate, each with its reason. */
  private suppressNagFindings() {
    NagSuppressions.addStackSuppressions(this, [
      { id: 'AwsSolutions-IAM4', reason: 'AWSLambdaBasicExecutionRole (CloudWatch Logs) is the managed policy Lambda needs; BucketDeployment and autoDeleteObjects custom resources use it too.' },
      { id: 'AwsSolutions-IAM5', reason: 'Wildcards come from CDK grants scoped to this stack: the table index ARNs (table/index/*), the WebSocket stage\'s @connections/* (ManageConnections on one stage only), and the deployment custom resources on this bucket\'s objects.' },
      { id: 'AwsSolutions-APIG4', reason: 'WebSocket $connect authenticates the token query parameter in the connect function (a refused token answers 401 before the upgrade); the HTTP API checks the bearer token on every route in the api function.' },
      { id: 'AwsSolutions-APIG1', reason: 'Both API stages have access logging (set on the L1 stage), which this rule does not see on HTTP/WebSocket APIs.' },
      { id: 'AwsSolutions-SMG4', reason: 'Rotating the HS256 token key would sign every user out; rotation is a deliberate operator action, documented in infra/README.md.' },
      { id: 'AwsSolutions-S1', reason: 'The web bucket holds the public build of the page only, served through CloudFront; its reads are in CloudFront\'s metrics.' },
      { id: 'AwsSolutions-CFR1', reason: 'A chat app for everyone: no geographic restriction.' },
      { id: 'AwsSolutions-CFR2', reason: 'The distribution serves static files only; the APIs have their own throttling. Add WAF for a public deployment under attack.' },
      { id: 'AwsSolutions-CFR3', reason: 'Static files only; CloudFront standard logs cost an extra bucket and are left to operators who want them.' },
      { id: 'AwsSolutions-CFR4', reason: 'The default *.cloudfront.net certificate cannot pin TLS 1.2; a custom domain with its own certificate (and minimumProtocolVersion TLS_V1_2_2021) does.' },
      { id: 'AwsSolutions-L1', reason: 'The functions run on provided.al2023, the newest runtime for Rust; CDK\'s own custom resources pick theirs.' },
      { id: 'AwsSolutions-SQS3', reason: 'The dead-letter queue itself has no dead-letter queue.' },
    ]);
  }
}

function pascal(name: string) {
  return name.replace(/(^|-)(\w)/g, (_, __, c: string) => c.toUpperCase());
}

/** The assets a checkout has: prebuilt bootstraps when target/lambda holds them. */
export function prebuiltAssetsIn(repoRoot: string): string | undefined {
  const dir = join(repoRoot, 'target/lambda');
  return FUNCTION_NAMES.every((n) => existsSync(join(dir, n, 'bootstrap'))) ? dir : undefined;
}
