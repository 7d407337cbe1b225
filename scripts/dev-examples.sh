#!/usr/bin/env bash
# Called by scripts/dev-up.sh once the stack is up: sets up (idempotently,
# through the api) an agent with a published, active version, a routed phone
# number and a tool on the stand-in n8n; then sends a demo call all the way
# through, as Twilio would, and shows what the tenant's staff see, with the
# curl command of each step.
set -euo pipefail
api=http://127.0.0.1:4000
auth=(-H "authorization: Bearer $TOKEN" -H 'content-type: application/json')
number="${DEV_PHONE_NUMBER:-+15005550006}"
here="$(dirname "$0")"
id_of() { sed -n 's/^{"id":"\([^"]*\)".*/\1/p'; }

existing=$(curl -sS "$api/internal/phone-numbers?tenant_id=$TENANT_ID&limit=200" "${auth[@]}")
if ! echo "$existing" | grep -q "\"$number\""; then
  agent=$(curl -sS -X POST "$api/internal/agents" "${auth[@]}" \
    -d "{\"tenant_id\":\"$TENANT_ID\",\"name\":\"Front desk\"}" | id_of)
  version=$(curl -sS -X POST "$api/internal/agents/$agent/versions" "${auth[@]}" \
    -d '{"config":{"prompt":"You are a friendly receptionist.","voice":"alloy","model":"gpt-4o-realtime"}}' | id_of)
  curl -sS -o /dev/null -X POST "$api/internal/agents/$agent/versions/$version/publish" "${auth[@]}"
  curl -sS -o /dev/null -X POST "$api/internal/agents/$agent/versions/$version/activate" "${auth[@]}"
  curl -sS -o /dev/null -X POST "$api/internal/phone-numbers" "${auth[@]}" \
    -d "{\"tenant_id\":\"$TENANT_ID\",\"e164\":\"$number\",\"twilio_sid\":\"PNdev\",\"agent_id\":\"$agent\"}"
fi
tools=$(curl -sS "$api/internal/tools?tenant_id=$TENANT_ID&limit=200" "${auth[@]}")
if ! echo "$tools" | grep -q '"lookup_booking"'; then
  integration=$(curl -sS -X POST "$api/internal/integrations/n8n/test" "${auth[@]}" \
    -d "{\"tenant_id\":\"$TENANT_ID\",\"base_url\":\"http://127.0.0.1:4005\",\"auth_type\":\"none\"}" | id_of)
  tool=$(curl -sS -X POST "$api/internal/tools" "${auth[@]}" \
    -d "{\"tenant_id\":\"$TENANT_ID\",\"name\":\"lookup_booking\",\"description\":\"Finds the caller's booking by phone number.\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"caller_phone\":{\"type\":\"string\"}},\"required\":[\"caller_phone\"]}}" | id_of)
  curl -sS -o /dev/null -X POST "$api/internal/tools/$tool/endpoints" "${auth[@]}" \
    -d "{\"integration_id\":\"$integration\",\"webhook_path\":\"lookup-booking\"}"
fi

cat <<MSG

Set-up done through the api: agent "Front desk" (version published and
activated), $number routed to it, tool lookup_booking on the demo n8n:
  curl -s "localhost:4000/internal/phone-numbers?tenant_id=$TENANT_ID" -H "authorization: Bearer \$TOKEN"
  curl -s "localhost:4000/internal/tools?tenant_id=$TENANT_ID" -H "authorization: Bearer \$TOKEN"

A demo call, signed as Twilio signs it (scripts/twilio-webhook.sh):
MSG
sid="CA$(openssl rand -hex 16)"
echo "  \$ scripts/twilio-webhook.sh $number $sid"
echo -n "  "; bash "$here/twilio-webhook.sh" "$number" "$sid"
# Twilio reports the call answered once the TwiML connects it.
answered=$(date +%s%N)
echo "  \$ scripts/twilio-webhook.sh --status in-progress $sid $number"
echo -n "  "; bash "$here/twilio-webhook.sh" --status in-progress "$sid" "$number"

pretty() { if command -v python3 >/dev/null; then python3 -m json.tool; else cat; fi; }
# One line per timeline item (the raw JSON without python3).
timeline() {
  if ! command -v python3 >/dev/null; then cat; return; fi
  python3 -c '
import json, sys
call = json.load(sys.stdin)
d = call["durations"]
print("status %s; ring %s s, talk %s s, total %s s"
      % (call["status"], d["ring_seconds"], d["talk_seconds"], d["total_seconds"]))
for item in call["timeline"]:
    at = item["at"][11:23]
    if item["kind"] == "tool_execution":
        print("%s  tool %s: %s in %s ms, input %s" % (at, item["tool_name"], item["status"],
              item["latency_ms"], json.dumps(item["input"])))
    else:
        print("%s  %s" % (at, item["type"]))
'
}
call_id=""
call() { curl -sS "$api/client/calls/$call_id" -H "authorization: Bearer $TOKEN"; }
transcript() { curl -sS "$api/client/calls/$call_id/transcript" -H "authorization: Bearer $TOKEN"; }
# has <path under the call> <text>: the client API's answer contains text.
has() { curl -sS "$api/client/calls/$call_id$1" -H "authorization: Bearer $TOKEN" | grep -qF "$2"; }
stored() {
  call_id=$(curl -sS "$api/client/calls?limit=1" -H "authorization: Bearer $TOKEN" \
    | grep "\"call_sid\":\"$sid\"" | sed -n 's/^{"items":\[{"id":"\([^"]*\)".*/\1/p')
  [ -n "$call_id" ]
}
# Waits (10 s at most) for a step; when it does not happen, says where to look.
step() {
  local what=$1 where=$2
  shift 2
  for _ in $(seq 1 40); do
    if "$@" >/dev/null 2>&1; then echo "  ok  $what"; return 0; fi
    sleep 0.25
  done
  echo "  --  $what: did not happen within 10 s; look at $where" >&2
  return 1
}
echo
echo "The call, step by step:"
step "stored by the ingress" .stack/webhook-ingress.log stored || exit 0
step "handed off (runtime.handoff_requested on NATS)" .stack/dispatch-worker.log \
  has "" '"type":"runtime.handoff_requested"' || exit 0
step "claimed by the reference runtime, which is talking" .stack/reference-runtime.log \
  has /transcript '"speaker"' || exit 0
step "tool lookup_booking run through the automation gateway" \
  ".stack/automation-worker.log and .stack/demo-n8n.log" has "" '"kind":"tool_execution"' || exit 0
step "conversation over (the runtime's call.ended)" .stack/reference-runtime.log \
  has "" '"type":"call.ended"' || exit 0
# Whole seconds since the answer, as Twilio's CallDuration counts them.
talk=$(( ($(date +%s%N) - answered) / 1000000000 ))
if [ "$talk" -lt 1 ]; then talk=1; fi
echo "  \$ scripts/twilio-webhook.sh --status completed $sid $number $talk   # the caller hangs up"
echo -n "  "; bash "$here/twilio-webhook.sh" --status completed "$sid" "$number" "$talk"
step "completed by Twilio's status callback" .stack/dispatch-worker.log \
  has "" '"status":"completed"' || exit 0

cat <<MSG

The call's transcript, as the tenant's staff see it:
  curl -s localhost:4000/client/calls/$call_id/transcript -H "authorization: Bearer \$TOKEN"
MSG
transcript | pretty | sed 's/^/  /'
cat <<MSG

Its durations and timeline (events and the tool execution), in short:
  curl -s localhost:4000/client/calls/$call_id -H "authorization: Bearer \$TOKEN"
MSG
call | timeline | sed 's/^/  /'
cat <<MSG

More:
  curl -s "localhost:4000/client/calls?limit=5" -H "authorization: Bearer \$TOKEN"
  curl -s "localhost:4000/client/kpis" -H "authorization: Bearer \$TOKEN"
  curl -s localhost:4000/asyncapi.json    # the runtime's NATS contract
MSG
