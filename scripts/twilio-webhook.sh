#!/usr/bin/env bash
# Sends one inbound-call webhook to the local ingress, signed exactly as
# Twilio signs it (HMAC-SHA1 of the URL + sorted params, base64), and prints
# the TwiML answer.
#   scripts/twilio-webhook.sh <To number> [CallSid]
set -euo pipefail
to="${1:?usage: scripts/twilio-webhook.sh <To e164> [CallSid]}"
sid="${2:-CA$(openssl rand -hex 16)}"
token="${TWILIO_AUTH_TOKEN:-dev-twilio-auth-token}"
base="${TWILIO_WEBHOOK_BASE_URL:-http://127.0.0.1:4001}"
url="$base/twilio/webhook/inbound"
from="+14155550100"
# Params sorted by name, appended as name+value (no delimiters).
signed="${url}AccountSidAC00000000000000000000000000000000CallSid${sid}CallStatusringingDirectioninboundFrom${from}To${to}"
sig=$(printf '%s' "$signed" | openssl dgst -sha1 -hmac "$token" -binary | base64)
curl -sS -X POST "$url" -H "x-twilio-signature: $sig" \
  --data-urlencode "AccountSid=AC00000000000000000000000000000000" \
  --data-urlencode "CallSid=$sid" --data-urlencode "CallStatus=ringing" \
  --data-urlencode "Direction=inbound" --data-urlencode "From=$from" --data-urlencode "To=$to"
echo
