#!/usr/bin/env bash
# Called by scripts/dev-up.sh once the stack is up: sets up an agent with a
# published, active version and a routed phone number (idempotent), sends one
# signed inbound call through the ingress, and shows the curl commands used.
set -euo pipefail
api=http://127.0.0.1:4000
auth=(-H "authorization: Bearer $TOKEN" -H 'content-type: application/json')
number="${DEV_PHONE_NUMBER:-+15005550006}"

existing=$(curl -sS "$api/internal/phone-numbers?tenant_id=$TENANT_ID&limit=200" "${auth[@]}")
if ! echo "$existing" | grep -q "\"$number\""; then
  agent=$(curl -sS -X POST "$api/internal/agents" "${auth[@]}" \
    -d "{\"tenant_id\":\"$TENANT_ID\",\"name\":\"Front desk\"}" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | head -n 1)
  version=$(curl -sS -X POST "$api/internal/agents/$agent/versions" "${auth[@]}" \
    -d '{"config":{"prompt":"You are a friendly receptionist.","voice":"alloy","model":"gpt-4o-realtime"}}' \
    | sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | head -n 1)
  curl -sS -o /dev/null -X POST "$api/internal/agents/$agent/versions/$version/publish" "${auth[@]}"
  curl -sS -o /dev/null -X POST "$api/internal/agents/$agent/versions/$version/activate" "${auth[@]}"
  curl -sS -o /dev/null -X POST "$api/internal/phone-numbers" "${auth[@]}" \
    -d "{\"tenant_id\":\"$TENANT_ID\",\"e164\":\"$number\",\"twilio_sid\":\"PNdev\",\"agent_id\":\"$agent\"}"
fi

cat <<MSG

Set-up done through the api (agent, version published and activated, $number routed):
  curl -s -X POST localhost:4000/internal/agents -H "authorization: Bearer \$TOKEN" \\
    -H 'content-type: application/json' -d '{"tenant_id":"$TENANT_ID","name":"Front desk"}'
  curl -s "localhost:4000/internal/phone-numbers?tenant_id=$TENANT_ID" -H "authorization: Bearer \$TOKEN"

A signed inbound call through the ingress (scripts/twilio-webhook.sh signs like Twilio):
MSG
echo "  \$ scripts/twilio-webhook.sh $number"
echo -n "  "; bash "$(dirname "$0")/twilio-webhook.sh" "$number"
sleep 1
cat <<MSG

The call as a tenant's staff sees it:
  curl -s "localhost:4000/client/calls?limit=5" -H "authorization: Bearer \$TOKEN"
  curl -s "localhost:4000/client/kpis" -H "authorization: Bearer \$TOKEN"
MSG
echo -n "  "; curl -sS "$api/client/calls?limit=1" -H "authorization: Bearer $TOKEN" | head -c 600; echo
