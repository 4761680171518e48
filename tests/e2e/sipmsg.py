"""Reading SIP messages in the test peers (scripts in this directory import it)."""


def headers(msg, name):
    """The values of every `name` header (lower case, full form) in the head of `msg`."""
    out = []
    for line in msg.split("\r\n")[1:]:
        if not line:
            break
        k, _, v = line.partition(":")
        if k.strip().lower() == name:
            out.append(v.strip())
    return out
