"""The API's routes, one `APIRouter` per area; `api.app.create_app` includes them all.

| module | routes |
| --- | --- |
| `health` | `/healthz`, `/readyz` |
| `transactions` | `POST /v1/transactions`, `POST /v1/transactions/batch`, `GET /v1/transactions/{id}` |
| `wallets` | `GET /v1/wallets/{id}/points` |
| `merchants` | a merchant's own reads: `/v1/merchants/{id}/rewards`, `/v1/merchants/{id}/transactions` |
| `configuration` | admin: `/v1/merchants`, `/v1/campaigns`, `/v1/terminals` and their `/{id}` |
| `finance` | grants, campaign budgets, settlement runs and payout results, chain heads, reconciliation, closeouts |
| `simulation` | `POST /v1/campaigns/{id}/simulate` |
| `audit` | `GET /v1/audit`, `POST /v1/merchants/{id}/bank-account/confirm` |
| `keys` | `/v1/keys`, `POST /v1/keys/{id}/revoke` |
| `events` | `GET /v1/events`, `/v1/webhooks` and `DELETE /v1/webhooks/{id}`, `GET /v1/webhook-deliveries` |

Handlers take their collaborators and the caller from api/deps.py.
"""
