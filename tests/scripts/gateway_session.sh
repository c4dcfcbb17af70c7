#!/bin/sh
# The JSON gateway with curl, as etcd's gRPC gateway guide uses it: every
# kind of call, its errors, a watch and a keep-alive stream, a lock, and
# authentication with a token in the Authorization header. Prints each
# call and its answer; tests/tests/gateway.rs runs it against etcd and
# raftkv and compares the transcripts.
#   gateway_session.sh http://127.0.0.1:2379
EP=$1
AUTH=""

# POST PATH BODY: the call and its JSON answer.
post() {
  echo "\$ POST $1 $2"
  if [ -n "$AUTH" ]; then
    curl -sS -X POST "$EP$1" -H "Authorization: $AUTH" -d "$2"
  else
    curl -sS -X POST "$EP$1" -d "$2"
  fi
  echo
}
# The HTTP status only (error texts of the JSON decoder are Go's on etcd).
code() {
  echo "\$ $1 $2 $3 (HTTP status)"
  curl -s -o /dev/null -w '%{http_code}\n' -X "$1" "$EP$2" -d "$3"
}
# METHOD PATH [HEADER]: the HTTP status and the CORS headers of the answer.
headers() {
  echo "\$ $1 $2 $3 (HTTP status, CORS headers)"
  curl -s -i -o /dev/stdout -X "$1" "$EP$2" ${3:+-H "$3"} -d '{}' | tr -d '\r' \
    | sed -n -e 's/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p' -e 's/^\([Aa]ccess-[Cc]ontrol-[^:]*\): */\1: /p' | tr 'A-Z' 'a-z' | sort
}
# A streaming call: what arrives within two seconds.
stream() {
  echo "\$ POST $1 $2 (stream)"
  curl -sS -N --max-time 2 -X POST "$EP$1" -d "$2"
  echo
}

echo "# kv (foo=Zm9v, bar=YmFy, foo1=Zm9vMQ==, foo2=Zm9vMg==, fop=Zm9w)"
post /v3/kv/put '{"key":"Zm9v","value":"YmFy"}'
post /v3/kv/put '{"key":"Zm9v","value":"YmFyMg==","prev_kv":true}'
post /v3/kv/put '{"key":"Zm9vMQ==","value":"MQ=="}'
post /v3/kv/put '{"key":"Zm9vMg==","value":"Mg==","prevKv":true}'
post /v3/kv/range '{"key":"Zm9v"}'
post /v3/kv/range '{"key":"Zm9v","range_end":"Zm9w"}'
post /v3/kv/range '{"key":"Zm9v","range_end":"Zm9w","keys_only":true,"limit":"2","sort_order":"DESCEND","sort_target":"KEY"}'
post /v3/kv/range '{"key":"Zm9v","range_end":"Zm9w","count_only":true}'
post /v3/kv/range '{"key":"Zm9v","revision":2}'
post /v3/kv/range '{"key":"AA==","range_end":"AA==","sort_order":1}'
post /v3/kv/range '{"key":"bm9uZQ=="}'
post /v3/kv/txn '{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmFyMg=="}],"success":[{"request_range":{"key":"Zm9v"}},{"request_put":{"key":"Zm9w","value":"dHhu"}}],"failure":[{"request_delete_range":{"key":"Zm9v"}}]}'
post /v3/kv/txn '{"compare":[{"target":"VERSION","key":"Zm9v","result":"GREATER","version":"10"}],"success":[],"failure":[{"request_delete_range":{"key":"Zm9w","prev_kv":true}}]}'
post /v3/kv/deleterange '{"key":"Zm9vMQ==","prev_kv":true}'
post /v3/kv/deleterange '{"key":"bm9uZQ=="}'

echo "# errors"
post /v3/kv/put '{"key":"","value":"YmFy"}'
post /v3/kv/range '{}'
post /v3/kv/range ''
post /v3/kv/put '{"key":"Zm9v","value":"YmFy","lease":"1234"}'
post /v3/kv/txn '{"success":[{"request_put":{"key":"Zm9v"}},{"request_put":{"key":"Zm9v"}}]}'
post /v3/kv/range '{"key":"Zm9v","revision":"100"}'
code POST /v3/kv/range '{"key":"!!!"}'
code POST /v3/kv/range '{"key":1}'
code POST /v3/kv/range '[1]'
code POST /v3/kv/range '{"key":'
code POST /v3/kv/range '{"sort_order":"BOGUS"}'
code GET /v3/kv/range ''
code POST /v3/no/such/call '{}'

echo "# cluster and maintenance"
post /v3/cluster/member/list '{}' | sed -E 's/"ID":"[0-9]+"/"ID":"<id>"/g; s/"peerURLs":\[[^]]*\]/"peerURLs":[<urls>]/'
code POST /v3/maintenance/status '{}'
post /v3/maintenance/alarm '{"action":"GET"}'
post /v3/maintenance/hash '{}' | sed -E 's/"hash":[0-9]+/"hash":<hash>/'

echo "# leases"
post /v3/lease/grant '{"ID":"1000","TTL":"60"}'
post /v3/lease/grant '{"ID":"1000","TTL":"60"}'
post /v3/kv/put '{"key":"bGVhc2Vk","value":"eA==","lease":"1000"}'
post /v3/lease/leases '{}'
post /v3/kv/lease/leases '{}'
# (the remaining TTL: etcd 3.4 rounds it down, later ones and raftkv up)
post /v3/lease/timetolive '{"ID":"1000","keys":true}' | sed -E 's/"TTL":"(5[0-9]|60)"/"TTL":"<remaining>"/'
stream /v3/lease/keepalive '{"ID":"1000"}'
post /v3/lease/revoke '{"ID":"1000"}'
post /v3/kv/lease/revoke '{"ID":"1000"}'
post /v3/kv/range '{"key":"bGVhc2Vk"}'

echo "# watch: history from revision 2, then the stream stays open"
stream /v3/watch '{"create_request":{"key":"Zm9v","range_end":"Zm9w","start_revision":"2","prev_kv":true}}'
stream /v3/watch '{"create_request":{"key":"Zm9v","start_revision":"2","filters":["NOPUT"]}}{"create_request":{"key":"Zm9vMg==","start_revision":"2"}}'

echo "# lock"
post /v3/lease/grant '{"ID":"2000","TTL":"60"}'
post /v3/lock/lock '{"name":"bXlsb2Nr","lease":"2000"}'
post /v3/lock/unlock '{"key":"bXlsb2NrLzdkMA=="}'
post /v3/lease/revoke '{"ID":"2000"}'

echo "# compaction"
post /v3/kv/compaction '{"revision":"4","physical":true}'
post /v3/kv/range '{"key":"Zm9v","revision":"3"}'
post /v3/kv/compaction '{"revision":"3"}'

echo "# authentication"
post /v3/auth/user/add '{"name":"root","password":"rootpw"}'
post /v3/auth/user/grant '{"user":"root","role":"root"}'
post /v3/auth/role/add '{"name":"root"}'
post /v3/auth/user/grant '{"user":"root","role":"root"}'
post /v3/auth/user/add '{"name":"app","password":"apppw"}'
post /v3/auth/role/add '{"name":"app"}'
post /v3/auth/role/grant '{"name":"app","perm":{"permType":"READWRITE","key":"Zm9v","range_end":"Zm9w"}}'
post /v3/auth/user/grant '{"user":"app","role":"app"}'
post /v3/auth/user/get '{"name":"app"}'
post /v3/auth/role/get '{"role":"app"}'
post /v3/auth/user/list '{}'
post /v3/auth/role/list '{}'
post /v3/auth/enable '{}'
post /v3/kv/range '{"key":"Zm9v"}'
post /v3/auth/authenticate '{"name":"app","password":"wrong"}'
post /v3/auth/authenticate '{"name":"app","password":"apppw"}' | sed 's/"token":"[^"]*"/"token":"<token>"/'
AUTH=$(curl -sS -X POST "$EP/v3/auth/authenticate" -d '{"name":"app","password":"apppw"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
post /v3/kv/range '{"key":"Zm9v"}'
post /v3/kv/put '{"key":"Zm9vMw==","value":"Mw=="}'
post /v3/kv/put '{"key":"b3RoZXI=","value":"eA=="}'
post /v3/auth/user/list '{}'
AUTH=not-a-token
post /v3/kv/range '{"key":"Zm9v"}'
AUTH=$(curl -sS -X POST "$EP/v3/auth/authenticate" -d '{"name":"root","password":"rootpw"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
post /v3/auth/role/revoke '{"role":"app","key":"Zm9v","range_end":"Zm9w"}'
post /v3/auth/user/changepw '{"name":"app","password":"newpw"}'
post /v3/auth/user/revoke '{"name":"app","role":"app"}'
post /v3/auth/disable '{}'
AUTH=""
post /v3/auth/user/delete '{"name":"app"}'
post /v3/auth/role/delete '{"role":"app"}'
post /v3/kv/range '{"key":"Zm9v","count_only":true}'

echo "# HTTP: etcd 3.3's /v3beta paths, CORS headers (--cors defaults to *), OPTIONS on any path"
post /v3beta/kv/range '{"key":"Zm9v","count_only":true}'
headers POST /v3/kv/range
headers POST /v3/kv/range "Origin: http://app.example:8080"
headers OPTIONS /v3/kv/put
headers OPTIONS /no/such/path
headers GET /health
