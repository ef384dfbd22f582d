<?php

declare(strict_types=1);

return [
    'default' => env('QUEUE_CONNECTION', 'redis'),
    'connections' => [
        'redis' => [
            'driver' => 'redis',
            'connection' => 'default',
            'queue' => env('REDIS_QUEUE', 'default'),
            // a job whose worker died is handed out again after this many seconds: keep it above
            // the longest job's $timeout (SubmitStudyToService4CT: 1200 s)
            'retry_after' => (int) env('QUEUE_RETRY_AFTER', 1320),
            'block_for' => null,
            'after_commit' => false,
        ],
        'sync' => ['driver' => 'sync'],
    ],
    // Horizon keeps failed jobs in Redis itself; with plain queue:work use `database-uuids`
    // and `php artisan queue:failed-table && php artisan migrate`
    'failed' => [
        'driver' => env('QUEUE_FAILED_DRIVER', 'null'),
        'database' => env('DB_CONNECTION', 'sqlite'),
        'table' => 'failed_jobs',
    ],
];
