#!/usr/bin/env bash
# Cluster lab for issue 16 (research prototype): router + 2 LB nodes + client +
# etcd witness, in network namespaces named fcr*, addresses from 198.18.0.0/15.
#
#   lab.sh up            build topology, start BIRD on router and LBs, echo servers
#   lab.sh bgp           BGP/BFD/ECMP measurements (needs up)
#   lab.sh live          tie the announcement to a daemon's liveness (needs up)
#   lab.sh client        client-side outage per flow (part of bgp; H_REPS=N)
#   lab.sh extra         failback timing, the include file as source of truth, carrier (needs up)
#   lab.sh etcd          3-member etcd: election, lease, partition (needs up)
#   lab.sh vrrp          keepalived baseline (needs up)
#   lab.sh down          kill every process started here, delete namespaces and /tmp/fcr-lab
#   lab.sh all           up + every experiment + down (down also on failure or Ctrl-C)
#
# Results go to /tmp/fcr-lab/results.txt (and stdout); `all` copies them to results-<time>.txt
# beside this script. Needs root, bird2, etcd-server, nftables (silent drop),
# etcd-client, keepalived, python3.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CFG=$HERE/configs
TOOL="python3 $HERE/fcrtool.py"
L=/tmp/fcr-lab
VIP=198.18.100.10
NSS="fcrR fcrC fcrL1 fcrL2 fcrW fcrS"
RES=$L/results.txt

log() { echo "[$(date +%T.%3N)] $*" | tee -a "$RES"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ---------------------------------------------------------------- teardown
down() {
    set +e
    # Only processes we started: their pids are in $L/pids (one per line) and
    # the bird/keepalived/etcd pid files under $L.
    if [ -d $L ]; then
        for f in $L/pids $L/*/pids; do
            [ -f "$f" ] && while read -r p; do kill -9 "$p" 2>/dev/null; done < "$f"
        done
        for f in $L/*/*.pid; do
            [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null
        done
    fi
    # Anything still inside our namespaces (started by us by construction).
    for ns in $NSS; do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    done
    sleep 0.2
    for ns in $NSS; do ip netns del "$ns" 2>/dev/null; done
    [ "${KEEP_RESULTS:-0}" = 1 ] && [ -f "$RES" ] && cp "$RES" "$HERE/results-$(date +%s).txt"
    rm -rf $L
    set -e
}

addpid() { echo "$1" >> $L/pids; }

# ---------------------------------------------------------------- topology
veth() { # veth NS_A IF_A ADDR_A NS_B IF_B ADDR_B
    ip link add "$2" netns "$1" type veth peer name "$5" netns "$4"
    ip -n "$1" link set "$2" up; ip -n "$4" link set "$5" up
    [ -n "$3" ] && ip -n "$1" addr add "$3" dev "$2"
    [ -n "$6" ] && ip -n "$4" addr add "$6" dev "$5"
    true
}

up() {
    down >/dev/null 2>&1 || true
    mkdir -p $L/r $L/l1 $L/l2 $L/w $L/c
    : > $RES
    for ns in $NSS; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
    for ns in $NSS; do
        ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    done
    # data path: client - router - lb1/lb2
    veth fcrC fcr-c-r 198.18.1.2/24 fcrR fcr-r-c 198.18.1.1/24
    veth fcrR fcr-r-l1 198.18.2.1/24 fcrL1 fcr-l1-r 198.18.2.2/24
    veth fcrR fcr-r-l2 198.18.3.1/24 fcrL2 fcr-l2-r 198.18.3.2/24
    ip netns exec fcrR sysctl -qw net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1
    ip -n fcrC route add 198.18.100.0/24 via 198.18.1.1
    ip -n fcrL1 route add 198.18.1.0/24 via 198.18.2.1
    ip -n fcrL2 route add 198.18.1.0/24 via 198.18.3.1
    for n in 1 2; do ip -n fcrL$n addr add $VIP/32 dev lo; done
    # control link (etcd): bridge in fcrS, lb1 .1, lb2 .2, witness .3
    ip -n fcrS link add fcr-ctl type bridge; ip -n fcrS link set fcr-ctl up
    # LAN for the VRRP baseline: bridge in fcrS, lb1 .2, lb2 .3, client .100
    ip -n fcrS link add fcr-lan type bridge; ip -n fcrS link set fcr-lan up
    local i=1
    for ns in fcrL1 fcrL2 fcrW; do
        veth "$ns" fcr-ctl0 198.18.9.$i/24 fcrS fcr-ctl-$i ""
        ip -n fcrS link set fcr-ctl-$i master fcr-ctl
        i=$((i + 1))
    done
    veth fcrL1 fcr-lan0 198.18.10.2/24 fcrS fcr-lan-1 ""
    veth fcrL2 fcr-lan0 198.18.10.3/24 fcrS fcr-lan-2 ""
    veth fcrC fcr-lan0 198.18.10.100/24 fcrS fcr-lan-c ""
    for p in fcr-lan-1 fcr-lan-2 fcr-lan-c; do ip -n fcrS link set $p master fcr-lan; done

    # BIRD everywhere (foreground processes, pids recorded)
    cp "$CFG/vips-blackhole.conf" $L/l1/vips.conf
    cp "$CFG/vips-blackhole.conf" $L/l2/vips.conf
    start_bird fcrR r "$CFG/bird-router.conf"
    start_bird fcrL1 l1 "$CFG/bird-lb1.conf"
    start_bird fcrL2 l2 "$CFG/bird-lb2.conf"
    # UDP echo servers on the VIP (port 7000) in both LBs, for the client probe
    for n in 1 2; do
        ip netns exec fcrL$n $TOOL echo lb$n 7000 3600 > /dev/null 2>&1 & addpid $!
    done
    wait_ecmp 15
    log "up: $(ip -n fcrR route show $VIP | tr '\n' ' ')"
}

start_bird() { # NS DIR CONF
    ip netns exec "$1" bird -f -c "$3" -s $L/$2/bird.ctl -P $L/$2/bird.pid > $L/$2/bird.out 2>&1 &
    addpid $!
}

birdc_() { local d=$1; shift; birdc -s $L/$d/bird.ctl "$@"; }

wait_ecmp() { # both next hops present
    local end=$((SECONDS + $1))
    while [ $SECONDS -lt $end ]; do
        local r; r=$(ip -n fcrR route show $VIP)
        if grep -q 198.18.2.2 <<<"$r" && grep -q 198.18.3.2 <<<"$r"; then return 0; fi
        sleep 0.1
    done
    log "ECMP route not complete after $1 s: $(ip -n fcrR route show $VIP | tr '\n' ' ')"
    birdc_ r show protocols | tee -a "$RES"
    return 1
}

bfd_up() { # wait until the router's BFD sessions to both LBs are Up
    local end=$((SECONDS + $1))
    while [ $SECONDS -lt $end ]; do
        [ "$(birdc_ r show bfd sessions | grep -c ' Up ')" -ge 2 ] && return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- BGP / BFD
bgp() {
    log "== BGP/BFD/ECMP"
    birdc_ r show bfd sessions | tee -a "$RES"
    ip -n fcrR route show $VIP | tee -a "$RES"
    for rep in 1 2 3; do
        restore_all
        # (a) kill -9 the LB1 bird
        local pid; pid=$(cat $L/l1/bird.pid)
        log "(a) kill -9 bird lb1 rep $rep: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 kill -9 "$pid")"
        restore_all
        # (b) link down on LB1's side of its link (carrier loss at the router)
        log "(b) ip link set down (lb1 side) rep $rep: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 ip -n fcrL1 link set fcr-l1-r down)"
        ip -n fcrL1 link set fcr-l1-r up
        restore_all
        # (c) birdc disable of the VIP's static protocol
        log "(c) birdc disable vip_web rep $rep: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 birdc -s $L/l1/bird.ctl disable vip_web)"
        log "    re-enable -> back: $($TOOL routewait fcrR $VIP 198.18.2.2 BACK 5 birdc -s $L/l1/bird.ctl enable vip_web)"
        restore_all
        # (d) silent drop on LB1 (nft drops everything in and out; carrier stays up): BFD's case
        log "(d) silent drop on lb1 (BFD 20ms x3) rep $rep: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 10 ip netns exec fcrL1 nft -f $CFG/nft-drop-all.nft)"
        ip netns exec fcrL1 nft delete table inet fcrdrop
    done
    restore_all
    # (d2) the router asks for slower BFD (the session runs at the slower of the two ends)
    local iv
    for iv in 50 100; do
        sed "s/20 ms/$iv ms/g" "$CFG/bird-router.conf" > $L/r/bird-bfd$iv.conf
        birdc_ r configure \"$L/r/bird-bfd$iv.conf\" >/dev/null
        restore_all
        for rep in 1 2; do
            log "(d2) silent drop on lb1, router BFD ${iv} ms x3 rep $rep: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 10 ip netns exec fcrL1 nft -f $CFG/nft-drop-all.nft)"
            ip netns exec fcrL1 nft delete table inet fcrdrop
            restore_all
        done
        birdc_ r show bfd sessions | tail -2 | tee -a "$RES"
    done
    birdc_ r configure \"$CFG/bird-router.conf\" >/dev/null
    restore_all
    # (e) the same silent drop without BFD (hold time 3 s): what BFD buys
    birdc_ r disable bfd1 >/dev/null 2>&1 || true
    sed 's/bfd on;/bfd off;/' "$CFG/bird-router.conf" > $L/r/bird-nobfd.conf
    birdc_ r configure \"$L/r/bird-nobfd.conf\" | tail -1 | tee -a "$RES"
    restore_all
    log "(e) silent drop on lb1, BFD off, hold 3 s: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 10 ip netns exec fcrL1 nft -f $CFG/nft-drop-all.nft)"
    ip netns exec fcrL1 nft delete table inet fcrdrop
    birdc_ r configure \"$CFG/bird-router.conf\" | tail -1 | tee -a "$RES"
    restore_all
    # (f) include rewrite + configure instead of disable
    printf '# no VIPs\n' > $L/l1/vips.conf
    log "(f) include emptied + birdc configure: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 birdc -s $L/l1/bird.ctl configure)"
    cp "$CFG/vips-blackhole.conf" $L/l1/vips.conf
    log "    include restored + configure -> back: $($TOOL routewait fcrR $VIP 198.18.2.2 BACK 5 birdc -s $L/l1/bird.ctl configure)"
    restore_all
    # (g) does `configure` undo a CLI `disable`? (pitfall check)
    birdc_ l1 disable vip_web >/dev/null; sleep 0.3
    birdc_ l1 configure >/dev/null; sleep 0.3
    log "(g) after disable + configure (unchanged file): $(birdc_ l1 show protocols vip_web | tail -1)"
    touch $L/l1/vips.conf; echo '# touched' >> $L/l1/vips.conf
    birdc_ l1 configure >/dev/null; sleep 0.3
    log "    after disable + configure (include changed, vip_web unchanged): $(birdc_ l1 show protocols vip_web | tail -1)"
    birdc_ l1 enable vip_web >/dev/null
    restore_all
    client_flows
    graceful
}

client_flows() {
    # (h) client-visible outage: 16 UDP flows every 5 ms (L4 ECMP hash spreads them),
    # lb1 fails at 1 s: silent drop (BFD detects) and link down
    for inj in "ip netns exec fcrL1 nft -f $CFG/nft-drop-all.nft" "ip -n fcrL1 link set fcr-l1-r down"; do
      for rep in $(seq 1 "${H_REPS:-3}"); do
        local nh; nh=$(ip -n fcrR route show $VIP | grep -c nexthop || true)
        ( sleep 1; $inj ) &
        log "(h) [$nh next hops before] client flows, lb1 fails at 1 s by [$inj] rep $rep: $(ip netns exec fcrC $TOOL probe $VIP 7000 16 5 3 | python3 -c '
import json,sys; f=json.load(sys.stdin); moved=[x for x in f if len(x["nodes"])>1]
print("flows", len(f), "moved", len(moved), "max gap ms of moved", max([x["max_gap_ms"] for x in moved] or [0]), "lost of moved", [x["sent"]-x["got"] for x in moved], "max gap of others", max([x["max_gap_ms"] for x in f if len(x["nodes"])<2] or [0]))')"
        restore_all
      done
    done
}

graceful() {
    # graceful restart: kill -9 lb1's bird (BFD off in the variants, so only the TCP close counts)
    log "(gr) graceful restart off both sides: route after kill -9 gone in $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 kill -9 "$(cat $L/l1/bird.pid)")"
    restore_all
    local rgr lgr
    for v in "on:off" "on:on" "aware:default"; do
        rgr=${v%%:*}; lgr=${v##*:}
        sed -e "s/graceful restart off;/graceful restart $rgr;/" -e 's/bfd on;/bfd off;/' "$CFG/bird-router.conf" > $L/r/bird-gr.conf
        if [ "$lgr" = default ]; then
            sed -e "/graceful restart off;/d" -e 's/bfd on;/bfd off;/' "$CFG/bird-lb1.conf" > $L/l1/bird-gr.conf
        else
            sed -e "s/graceful restart off;/graceful restart $lgr;/" -e 's/bfd on;/bfd off;/' "$CFG/bird-lb1.conf" > $L/l1/bird-gr.conf
        fi
        birdc_ r configure \"$L/r/bird-gr.conf\" >/dev/null
        kill -9 "$(cat $L/l1/bird.pid)"; sleep 0.3
        ip netns exec fcrL1 bird -f -c $L/l1/bird-gr.conf -s $L/l1/bird.ctl -P $L/l1/bird.pid > $L/l1/bird.out 2>&1 & addpid $!
        sleep 0.5; birdc_ r restart lb1 >/dev/null; wait_ecmp 15 || true; sleep 1
        log "(gr) router graceful restart $rgr, lb1 $lgr (BFD off): route after kill -9 of lb1 bird: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 12 kill -9 "$(cat $L/l1/bird.pid)")"
        birdc_ r show protocols lb1 | tail -1 | tee -a "$RES"
        birdc_ r configure \"$CFG/bird-router.conf\" >/dev/null
        restore_all
    done
}

restore_all() { # bird running on both LBs with the blackhole include, both next hops, BFD up
    for n in 1 2; do
        ip -n fcrL$n link set fcr-l$n-r up
        ip -n fcrL$n route replace 198.18.1.0/24 via 198.18.$((n + 1)).1   # gone after a link down
        ip netns exec fcrL$n nft delete table inet fcrdrop 2>/dev/null || true
        if ! birdc_ l$n show status >/dev/null 2>&1; then
            cp "$CFG/vips-blackhole.conf" $L/l$n/vips.conf
            start_bird fcrL$n l$n "$CFG/bird-lb$n.conf"
            sleep 0.3
        fi
        birdc_ l$n enable vip_web >/dev/null 2>&1 || true
    done
    # the router's session is in error wait after a failure: restart it to reconnect now
    for n in 1 2; do
        birdc_ r show protocols lb$n | grep -q Established || birdc_ r restart lb$n >/dev/null
    done
    wait_ecmp 20
    bfd_up 10 || log "BFD not up: $(birdc_ r show bfd sessions | tr '\n' ' ')"
    sleep 0.5
}

# ---------------------------------------------------------------- liveness
live() {
    log "== liveness: VIP route via the daemon's tun device"
    restore_all
    # the "daemon": a process holding a non-persistent tun fo-live in lb1
    ip netns exec fcrL1 $TOOL tunhold fo-live 600 $L/l1/hb > /dev/null 2>&1 & local dpid=$!; addpid $dpid
    sleep 0.5
    cp "$CFG/vips-tun.conf" $L/l1/vips.conf
    birdc_ l1 configure | tail -1 | tee -a "$RES"
    wait_ecmp 10
    birdc_ l1 show route | tee -a "$RES"
    log "(L1) kill -9 of the tun-holding daemon: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 kill -9 $dpid)"
    log "    daemon restarted -> back: $($TOOL routewait fcrR $VIP 198.18.2.2 BACK 10 ip netns exec fcrL1 $TOOL tunhold fo-live 600 $L/l1/hb)"
    local dpid2; dpid2=$(pgrep -f "tunhold fo-live 600" | head -1); addpid $dpid2
    sleep 0.5
    # hung daemon: SIGSTOP; an external watchdog (systemd WatchdogSec= in production)
    # sets the device down and kills the daemon when the heartbeat is 300 ms old
    ip netns exec fcrL1 $TOOL watchdog $dpid2 $L/l1/hb 300 60 fo-live > $L/l1/wd.out & addpid $!
    sleep 0.5
    log "(L2) SIGSTOP of the daemon, watchdog 300 ms: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 kill -STOP $dpid2)"
    sleep 0.2; cat $L/l1/wd.out | tee -a "$RES"
    # daemon as bird's parent, bird with PDEATHSIG: kill -9 of the parent kills bird
    cp "$CFG/vips-blackhole.conf" $L/l1/vips.conf
    kill -9 "$(cat $L/l1/bird.pid)" 2>/dev/null || true; sleep 0.3
    ip netns exec fcrL1 python3 -c '
import ctypes, os, signal, sys, time
pid = os.fork()
if pid == 0:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    os.execvp("bird", ["bird", "-f", "-c", sys.argv[1], "-s", sys.argv[2], "-P", sys.argv[3]])
time.sleep(600)
' "$CFG/bird-lb1.conf" $L/l1/bird.ctl $L/l1/bird.pid > $L/l1/bird.out 2>&1 & local ppid=$!; addpid $ppid
    sleep 0.5; birdc_ r restart lb1 >/dev/null; wait_ecmp 15; bfd_up 10 || true; sleep 0.5
    log "(L3) kill -9 of the daemon that is bird's parent (PDEATHSIG): $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 kill -9 $ppid)"
    restore_all
}

# ---------------------------------------------------------------- extra checks
extra() {
    log "== extra BIRD checks"
    restore_all
    # (x1) failback without help: silent drop healed, how long until lb1's next hop is back
    # (router and lb: connect delay 1 s, error wait 1..5 s; BIRD defaults are 5 s and 60..300 s)
    ip netns exec fcrL1 nft -f $CFG/nft-drop-all.nft
    sleep 1
    log "(x1) silent drop healed, no manual restart -> lb1 next hop back after $($TOOL routewait fcrR $VIP 198.18.2.2 BACK 30 ip netns exec fcrL1 nft delete table inet fcrdrop)"
    restore_all
    # (x2) the include file as the source of truth: `disabled yes;` + configure, then `disabled no;`
    sed 's/    ipv4;/    disabled yes;\n    ipv4;/' "$CFG/vips-blackhole.conf" > $L/l1/vips.conf
    log "(x2) include says disabled yes + configure: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 birdc -s $L/l1/bird.ctl configure)"
    log "     $(birdc_ l1 show protocols vip_web | tail -1)"
    birdc_ l1 enable vip_web >/dev/null; sleep 0.3
    log "     CLI enable of a protocol the file disables: $(birdc_ l1 show protocols vip_web | tail -1)"
    birdc_ l1 configure >/dev/null; sleep 0.3
    log "     ... then configure (file unchanged): $(birdc_ l1 show protocols vip_web | tail -1)"
    sed 's/    ipv4;/    disabled no;\n    ipv4;/' "$CFG/vips-blackhole.conf" > $L/l1/vips.conf
    log "     include says disabled no + configure -> back after $($TOOL routewait fcrR $VIP 198.18.2.2 BACK 5 birdc -s $L/l1/bird.ctl configure)"
    cp "$CFG/vips-blackhole.conf" $L/l1/vips.conf; birdc_ l1 configure >/dev/null
    restore_all
    # (x3) check link: the daemon drops the tun's carrier (readiness switch without dying)
    ip netns exec fcrL1 $TOOL tunhold fo-live 600 > /dev/null 2>&1 & local dpid=$!; addpid $dpid
    sleep 0.5
    cp "$CFG/vips-tun.conf" $L/l1/vips.conf; birdc_ l1 configure >/dev/null; wait_ecmp 10
    log "(x3) ip link set fo-live carrier off: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 ip -n fcrL1 link set fo-live carrier off 2>&1)"
    log "     carrier on: $($TOOL routewait fcrR $VIP 198.18.2.2 BACK 5 ip -n fcrL1 link set fo-live carrier on)"
    log "(x3) ip link set fo-live down: $($TOOL routewait fcrR $VIP 198.18.2.2 GONE 5 ip -n fcrL1 link set fo-live down)"
    log "     up: $($TOOL routewait fcrR $VIP 198.18.2.2 BACK 5 ip -n fcrL1 link set fo-live up)"
    kill -9 $dpid; cp "$CFG/vips-blackhole.conf" $L/l1/vips.conf; birdc_ l1 configure >/dev/null
    restore_all
}

# ---------------------------------------------------------------- etcd
ETCD_EP=http://198.18.9.1:2379,http://198.18.9.2:2379,http://198.18.9.3:2379

start_etcd() { # NS NAME IP HEARTBEAT ELECTION
    local ns=$1 name=$2 ip=$3
    mkdir -p $L/$name
    ip netns exec "$ns" etcd --name "$name" --data-dir "$L/$name/data" \
        --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
        --listen-client-urls "http://$ip:2379,http://127.0.0.1:2379" \
        --advertise-client-urls "http://$ip:2379" \
        --initial-cluster "e1=http://198.18.9.1:2380,e2=http://198.18.9.2:2380,e3=http://198.18.9.3:2380" \
        --initial-cluster-state new --initial-cluster-token fcr-lab \
        --heartbeat-interval "$4" --election-timeout "$5" \
        --logger zap --log-outputs "$L/$name/etcd.log" > /dev/null 2>&1 &
    echo $! > $L/$name/etcd.pid; addpid $!
}

stop_etcd() {
    for n in e1 e2 e3; do [ -f $L/$n/etcd.pid ] && kill -9 "$(cat $L/$n/etcd.pid)" 2>/dev/null; rm -rf $L/$n; done
    sleep 0.3
}

etcd_cluster() { # HEARTBEAT ELECTION
    stop_etcd
    start_etcd fcrL1 e1 198.18.9.1 "$1" "$2"
    start_etcd fcrL2 e2 198.18.9.2 "$1" "$2"
    start_etcd fcrW e3 198.18.9.3 "$1" "$2"
    local end=$((SECONDS + 20))
    while [ $SECONDS -lt $end ]; do
        ip netns exec fcrW etcdctl --endpoints $ETCD_EP --command-timeout=500ms endpoint health >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "etcd cluster not healthy"; return 1
}

etcd_leader() { # prints the name of the leader member (e1/e2/e3)
    local i
    for i in $(seq 1 50); do
        etcd_leader1 && return 0
        sleep 0.2
    done
    return 1
}

etcd_leader1() {
    ip netns exec fcrW etcdctl --endpoints $ETCD_EP --command-timeout=500ms endpoint status -w json 2>/dev/null | python3 -c '
import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print({"198.18.9.1":"e1","198.18.9.2":"e2","198.18.9.3":"e3"}[s["Endpoint"].split("//")[1].split(":")[0]]); sys.exit(0)
sys.exit(1)'
}

ns_of() { case $1 in e1) echo fcrL1;; e2) echo fcrL2;; e3) echo fcrW;; esac; }

election() { # HEARTBEAT ELECTION REPS
    etcd_cluster "$1" "$2"
    for rep in $(seq 1 "$3"); do
        sleep 2
        local ld; ld=$(etcd_leader)
        local others; others=$(for n in e1 e2 e3; do if [ $n != "$ld" ]; then echo -n "http://198.18.9.${n#e}:2379,"; fi; done)
        local t0; t0=$(date +%s.%N)
        kill -9 "$(cat $L/$ld/etcd.pid)"
        # first successful linearizable write through the survivors
        local ok=""
        for i in $(seq 1 400); do
            python3 -c "import sys,time; sys.exit(time.time()-$t0 > 15)" || break
            if ip netns exec fcrW etcdctl --endpoints "${others%,}" --command-timeout=200ms put /fcr/probe "$i" >/dev/null 2>&1; then
                ok=$(python3 -c "import time; print(round((time.time()-$t0)*1000))"); break
            fi
        done
        # the survivors' logs say when a new leader was elected
        local el; el=$(cat $L/e*/etcd.log | python3 -c "
import datetime,json,sys
t0=$t0; best=None
for line in sys.stdin:
    try:
        j=json.loads(line); ts=datetime.datetime.fromisoformat(j['ts'].replace('Z','+00:00')).timestamp()
    except Exception: continue
    if 'elected leader' in j.get('msg','') and ts>t0:
        best = ts if best is None else min(best, ts)
print(round((best-t0)*1000) if best else None)" || true)
        log "etcd hb=$1 el=$2 rep $rep: killed leader $ld; new leader elected after ${el} ms; first write ok after ${ok} ms"
        # bring the killed member back (same data dir)
        local ip="198.18.9.${ld#e}"
        mv $L/$ld/etcd.log $L/$ld/etcd.log.$rep
        ip netns exec "$(ns_of "$ld")" etcd --name "$ld" --data-dir "$L/$ld/data" \
            --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
            --listen-client-urls "http://$ip:2379,http://127.0.0.1:2379" --advertise-client-urls "http://$ip:2379" \
            --initial-cluster "e1=http://198.18.9.1:2380,e2=http://198.18.9.2:2380,e3=http://198.18.9.3:2380" \
            --initial-cluster-state new --initial-cluster-token fcr-lab \
            --heartbeat-interval "$1" --election-timeout "$2" \
            --logger zap --log-outputs "$L/$ld/etcd.log" > /dev/null 2>&1 &
        echo $! > $L/$ld/etcd.pid; addpid $!
        sleep 3
    done
}

etcd_exp() {
    log "== etcd 3.4"
    election 100 1000 3
    election 50 500 3
    election 25 250 3
    # lease with TTL 2 s (cluster 100/1000; min TTL is 1.5*election timeout rounded up)
    etcd_cluster 100 1000
    local out
    for rep in 1 2 3; do
        out=$(ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 lease grant 2)
        local id; id=$(awk '{print $2}' <<<"$out")
        ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 put /fcr/node/l1 up --lease="$id" >/dev/null
        log "lease TTL 2 s rep $rep, no keepalive after the put: key gone after $($TOOL keywait fcrW http://198.18.9.3:2379 /fcr/node/l1 6)"
    done
    ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 lease grant 1 2>&1 | sed 's/^/    lease grant 1 -> /' | tee -a "$RES"
    # a client cut off: lb1 loses its control link (its member becomes a minority of 1),
    # once with the raft leader elsewhere (e3), once with lb1's own member leading
    local target
    for target in e3 e1; do
        local tid; tid=$(ip netns exec fcrW etcdctl --endpoints $ETCD_EP member list | awk -F', ' -v n=$target '$3 == n {print $1}')
        ip netns exec fcrW etcdctl --endpoints $ETCD_EP move-leader "$tid" 2>&1 | tail -1 | sed 's/^/    /' | tee -a "$RES" || true
        sleep 1
        out=$(ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 lease grant 3); id=$(awk '{print $2}' <<<"$out")
        ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 put /fcr/node/l1 up --lease="$id" >/dev/null
        ( ip netns exec fcrL1 timeout 12 etcdctl --endpoints http://127.0.0.1:2379 lease keep-alive "$id" 2>&1 |
            while read -r l; do echo "$(date +%T.%3N) $l"; done > $L/l1/ka.out ) & addpid $!
        sleep 1.5
        local ldr; ldr=$(etcd_leader || echo '?')
        local t0; t0=$(date +%s.%N)
        ip -n fcrL1 link set fcr-ctl0 down
        log "partition (raft leader $ldr): lb1 control link down at $(date -d @${t0%.*} +%T).${t0#*.} (lease TTL 3 s, kept alive by lb1 through its local member)"
        log "  majority side sees /fcr/node/l1 gone after $($TOOL keywait fcrW http://198.18.9.3:2379 /fcr/node/l1 10)"
        log "  lb1 local put (timeout 1s): $(ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 --command-timeout=1s put /fcr/x y 2>&1 | tail -1)"
        log "  lb1 local get linearizable: $(ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 --command-timeout=1s get /fcr/node/l1 2>&1 | tail -1)"
        log "  lb1 local get serializable: $(ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 --command-timeout=1s get /fcr/node/l1 --consistency=s --print-value-only 2>&1 | tail -1) (stale: the key is gone on the majority)"
        log "  lb1 member status: $(ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 --command-timeout=1s endpoint status 2>&1 | tail -1)"
        sleep 2
        log "  lb1 keep-alive output (etcdctl lease keep-alive, timestamped):"
        sed 's/^/    /' $L/l1/ka.out | tee -a "$RES"
        ip -n fcrL1 link set fcr-ctl0 up
        local end=$((SECONDS + 20))
        until ip netns exec fcrL1 etcdctl --endpoints http://127.0.0.1:2379 --command-timeout=500ms endpoint health >/dev/null 2>&1 || [ $SECONDS -gt $end ]; do sleep 0.2; done
        sleep 1
    done
    # the Rust etcd-client crate (0.21.1) against this 3.4 cluster, if it was built
    local probe=${FCR_ETCD_PROBE:-/tmp/fcr-target/release/fcr-etcdcheck}
    if [ -x "$probe" ]; then
        log "etcd-client crate probe (from lb1, three endpoints):"
        ip netns exec fcrL1 timeout 20 "$probe" $ETCD_EP 2>&1 | sed 's/^/    /' | tee -a "$RES" || true
    fi
    stop_etcd
}

# ---------------------------------------------------------------- keepalived
vrrp_one() { # ADVERT_INT REPS
    for n in 1 2; do
        local prio=$((n == 1 ? 150 : 100))
        sed -e "s/@PRIO@/$prio/" -e "s/@ADVERT@/$1/" -e "s/@N@/$n/" \
            "$CFG/keepalived.conf.in" > $L/l$n/keepalived.conf
        rm -f $L/l$n/ka.pid $L/l$n/vrrp.pid   # a killed, unreaped keepalived leaves a zombie that its pid file names
        ip netns exec fcrL$n keepalived -n -l -D -P -f $L/l$n/keepalived.conf -p $L/l$n/ka.pid \
            -r $L/l$n/vrrp.pid -i fcrl$n > $L/l$n/keepalived.out 2>&1 & echo $! > $L/l$n/kam.pid; addpid $!
    done
    local end=$((SECONDS + 15))
    until ip -n fcrL1 addr show fcr-lan0 | grep -q 198.18.10.10 || [ $SECONDS -gt $end ]; do sleep 0.1; done
    sleep 2
    log "keepalived advert_int $1: $(grep -i -m1 -E 'advert|interval' $L/l1/keepalived.out || true)"
    for rep in $(seq 1 "$2"); do
        # (i) kill -9 of the master's keepalived only: how long until lb2 holds the VIP
        local k="kill -9 $(cat $L/l1/kam.pid) $(cat $L/l1/vrrp.pid)"
        log "keepalived advert_int $1 rep $rep: kill -9 master keepalived -> VIP on lb2 after $($TOOL routewait fcrL2 'table local 198.18.10.10' 198.18.10.10 BACK 10 sh -c "$k")"
        ip -n fcrL1 addr del 198.18.10.10/32 dev fcr-lan0 2>/dev/null || true
        restart_ka1
        # (ii) node death as the client sees it: keepalived killed and the node's LAN
        # port down at the same instant; 4 UDP flows every 5 ms
        k="kill -9 $(cat $L/l1/kam.pid) $(cat $L/l1/vrrp.pid); ip -n fcrL1 link set fcr-lan0 down"
        ( sleep 1; sh -c "$k" ) &
        local r; r=$(ip netns exec fcrC $TOOL probe 198.18.10.10 7000 4 5 $(python3 -c "print(3+6*$1)") | python3 -c '
import json,sys; f=json.load(sys.stdin); print("max gap ms", max(x["max_gap_ms"] for x in f), "lost", [x["sent"]-x["got"] for x in f], "nodes", f[0]["nodes"])')
        log "keepalived advert_int $1 rep $rep: node death (kill -9 + link down) -> client $r"
        ip -n fcrL1 addr del 198.18.10.10/32 dev fcr-lan0 2>/dev/null || true
        ip -n fcrL1 link set fcr-lan0 up
        restart_ka1
    done
    for n in 1 2; do kill -9 "$(cat $L/l$n/kam.pid)" "$(cat $L/l$n/vrrp.pid)" 2>/dev/null || true; done
    sleep 0.3
    for n in 1 2; do ip -n fcrL$n addr del 198.18.10.10/32 dev fcr-lan0 2>/dev/null || true; done
    true
}

restart_ka1() { # lb1's keepalived back; it preempts (priority 150)
    rm -f $L/l1/ka.pid $L/l1/vrrp.pid
    ip netns exec fcrL1 keepalived -n -l -D -P -f $L/l1/keepalived.conf -p $L/l1/ka.pid \
        -r $L/l1/vrrp.pid -i fcrl1 >> $L/l1/keepalived.out 2>&1 & echo $! > $L/l1/kam.pid; addpid $!
    local end=$((SECONDS + 15))
    until ip -n fcrL1 addr show fcr-lan0 | grep -q 198.18.10.10 || [ $SECONDS -gt $end ]; do sleep 0.1; done
    sleep 2
}

vrrp() {
    log "== keepalived VRRP baseline (VRRPv3, VIP 198.18.10.10 on the LAN bridge)"
    local a
    for a in ${VRRP_ADVERTS:-1 0.1 0.05 0.01}; do vrrp_one "$a" "${VRRP_REPS:-3}"; done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    bgp) bgp ;;
    live) live ;;
    extra) extra ;;
    client) client_flows ;;
    etcd) etcd_exp ;;
    vrrp) vrrp ;;
    all)
        trap 'KEEP_RESULTS=1 down' EXIT INT TERM
        up; bgp; live; extra; etcd_exp; vrrp
        ;;
    *) sed -n '2,14p' "$0"; exit 2 ;;
esac
