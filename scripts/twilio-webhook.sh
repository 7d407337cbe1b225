#!/usr/bin/env bash
# Sends one webhook to the local ingress, signed exactly as Twilio signs it
# (HMAC-SHA1 of the URL followed by every parameter's name and value, sorted
# by name; base64), and prints the answer.
#   scripts/twilio-webhook.sh <To e164> [CallSid]
#       an inbound call ringing (prints the TwiML)
#   scripts/twilio-webhook.sh --status <CallStatus> <CallSid> <To e164> [CallDuration]
#       a status callback, as Twilio sends when the call moves on or ends
set -euo pipefail
token="${TWILIO_AUTH_TOKEN:-dev-twilio-auth-token}"
base="${TWILIO_WEBHOOK_BASE_URL:-http://127.0.0.1:4001}"
account="AC00000000000000000000000000000000"

if [ "${1:-}" = "--status" ]; then
  status="${2:?usage: scripts/twilio-webhook.sh --status <CallStatus> <CallSid> <To> [CallDuration]}"
  sid="${3:?CallSid missing}"
  to="${4:?To missing}"
  url="$base/twilio/webhook/status"
  params=("AccountSid=$account" "CallSid=$sid" "CallStatus=$status" "To=$to")
  if [ -n "${5:-}" ]; then params+=("CallDuration=$5"); fi
else
  to="${1:?usage: scripts/twilio-webhook.sh <To e164> [CallSid]}"
  sid="${2:-CA$(openssl rand -hex 16)}"
  url="$base/twilio/webhook/inbound"
  params=("AccountSid=$account" "CallSid=$sid" "CallStatus=ringing" "Direction=inbound"
    "From=${TWILIO_FROM:-+14155550100}" "To=$to")
fi

# The signed string: the URL, then name+value of each parameter sorted by name.
signed="$url"
while IFS= read -r pair; do
  signed+="${pair%%=*}${pair#*=}"
done < <(printf '%s\n' "${params[@]}" | LC_ALL=C sort -t= -k1,1)
sig=$(printf '%s' "$signed" | openssl dgst -sha1 -hmac "$token" -binary | base64)

form=()
for pair in "${params[@]}"; do form+=(--data-urlencode "$pair"); done
curl -sS -X POST "$url" -H "x-twilio-signature: $sig" "${form[@]}"
echo
