<?php

declare(strict_types=1);

namespace App\Console\Commands;

use App\Services\Service4CT\Service4CTException;

/**
 * How the service4ct:* commands print an error answer: its stable code, HTTP status, request id
 * (quote it when reporting a problem), whether a retry can help; the command then exits 1.
 */
trait ReportsService4CTErrors
{
    protected function reportServiceError(Service4CTException $e): int
    {
        $this->error(sprintf(
            'service4ct error %s (HTTP %d, request id %s, retryable: %s%s): %s',
            $e->errorCode,
            $e->status,
            $e->requestId ?? '-',
            $e->retryable() ? 'yes' : 'no',
            $e->retryAfter !== null ? ", retry after {$e->retryAfter} s" : '',
            $e->detail,
        ));

        return 1;
    }
}
