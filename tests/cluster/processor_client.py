"""The card processor's side of the gateway, run in a Pod (mounted from a ConfigMap).

``python processor_client.py URL BODY`` signs BODY with the gateway's signing Secret
(mounted at /signing/secret) exactly as the README does, with `fintech-operator gateway
sign`, POSTs it to URL (the gateway's Service) and prints ``{"status": ..., "answer": ...}``.
"""

import json
import subprocess
import sys

import httpx


def main() -> None:
    url, body = sys.argv[1], sys.argv[2]
    signed = subprocess.run(
        ["fintech-operator", "gateway", "sign", "--secret-file", "/signing/secret", body],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    headers = dict(line.split(": ", 1) for line in signed.splitlines() if line)
    headers["content-type"] = "application/json"
    answer = httpx.post(url, content=body, headers=headers, timeout=30)
    print(json.dumps({"status": answer.status_code, "answer": answer.json()}))


if __name__ == "__main__":
    main()
