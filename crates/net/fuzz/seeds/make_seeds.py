#!/usr/bin/env python3
"""Writes the small seed corpora under seeds/<target>/ (run from crates/net/fuzz)."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
GATEWAY_MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x02])
GUEST_IP = bytes([10, 0, 2, 15])
GATEWAY_IP = bytes([10, 0, 2, 2])


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def ipv4(proto, dst, payload, src=GUEST_IP):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, src, dst)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def l4(proto, dst, segment):
    # Fill in the checksum at the protocol's offset using the pseudo-header.
    pseudo = GUEST_IP + dst + struct.pack("!BBH", 0, proto, len(segment))
    offset = {17: 6, 6: 16}[proto]
    value = checksum(pseudo + segment)
    return segment[:offset] + struct.pack("!H", value) + segment[offset + 2:]


def ethernet(dst_mac, ethertype, payload):
    return dst_mac + GUEST_MAC + struct.pack("!H", ethertype) + payload


def name(text):
    out = b""
    for label in text.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def question(qname, qtype):
    return name(qname) + struct.pack("!HH", qtype, 1)


def dns_query(qname, qtype, ident=0x1234, additional=b"", arcount=0):
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, arcount) + question(qname, qtype) + additional


def rr(owner, rtype, rdata, ttl=60):
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def build_client_hello(sni):
    """Same bytes as net::tls::build_client_hello."""
    ext = b""
    if sni is not None:
        n = sni.encode()
        entry = 3 + len(n)
        ext += b"\x00\x00" + struct.pack("!HH", entry + 2, entry) + b"\x00" + struct.pack("!H", len(n)) + n
    ext += bytes([0x00, 0x2B, 0x00, 0x03, 0x02, 0x03, 0x04])
    body = b"\x03\x03" + b"\x42" * 32 + bytes([32]) + b"\x17" * 32
    body += bytes([0x00, 0x04, 0x13, 0x01, 0x13, 0x02, 0x01, 0x00]) + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def frame_stream(frames):
    return b"".join(struct.pack("!I", len(f)) + f for f in frames)


# --- frames: 2 bytes chunking seed, then the length-prefixed stream.
arp = ethernet(b"\xff" * 6, 0x0806, struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
               + GUEST_MAC + GUEST_IP + b"\0" * 6 + GATEWAY_IP)
query = dns_query("allowed.test", 1)
udp = struct.pack("!HHHH", 5353, 53, 8 + len(query), 0) + query
udp_frame = ethernet(GATEWAY_MAC, 0x0800, ipv4(17, GATEWAY_IP, l4(17, GATEWAY_IP, udp)))
dst = bytes([93, 184, 216, 34])
syn = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x50, 0x02, 65535, 0, 0)
syn_frame = ethernet(GATEWAY_MAC, 0x0800, ipv4(6, dst, l4(6, dst, syn)))
icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"
icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
icmp_frame = ethernet(GATEWAY_MAC, 0x0800, ipv4(1, GATEWAY_IP, icmp))
write("frames", "arp", b"\x01\x00" + frame_stream([arp]))
write("frames", "udp-dns", b"\x07\x00" + frame_stream([udp_frame]))
write("frames", "mixed", b"\x2a\x00" + frame_stream([arp, udp_frame, syn_frame, icmp_frame]))

# --- dns: u16 query length, query, upstream answer.
def dns_seed(q, answer):
    return struct.pack("!H", len(q)) + q + answer

ptr = b"\xc0\x0c"  # the question name
cdn = name("cdn.allowed.test")
answers = [
    rr(ptr, 5, cdn),
    rr(cdn, 1, bytes([93, 184, 216, 34])),
    rr(cdn, 1, bytes([10, 0, 0, 1])),
    rr(cdn, 1, bytes([127, 0, 0, 1])),
    rr(cdn, 28, bytes(15) + b"\x01"),
    rr(ptr, 16, b"\x05hello"),
]
answer = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, len(answers), 0, 0) + question("allowed.test", 1) + b"".join(answers)
write("dns", "a-with-cname", dns_seed(query, answer))
soa = rr(name("allowed.test"), 6, name("ns.allowed.test") + name("root.allowed.test") + struct.pack("!IIIII", 1, 2, 3, 4, 5))
nx = struct.pack("!HHHHHH", 0x1234, 0x8183, 1, 0, 1, 0) + question("allowed.test", 1) + soa
write("dns", "nxdomain", dns_seed(query, nx))
opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
q_edns = dns_query("www.allowed.test", 1, ident=7, additional=opt, arcount=1)
a_edns = struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 1) + question("www.allowed.test", 1) \
    + rr(ptr, 1, bytes([127, 1, 2, 3])) + opt
write("dns", "edns-loopback", dns_seed(q_edns, a_edns))
write("dns", "aaaa-query", dns_seed(dns_query("allowed.test", 28), b""))
write("dns", "mx-other", dns_seed(dns_query("example.org", 15), b""))

# --- sni
write("sni", "client-hello", build_client_hello("allowed.test"))
write("sni", "client-hello-nosni", build_client_hello(None))
hs = build_client_hello("split.test")[5:]
split = b"".join(b"\x16\x03\x01" + struct.pack("!H", len(p)) + p for p in (hs[:20], hs[20:]))
write("sni", "client-hello-split", split)
