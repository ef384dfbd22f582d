<?php

declare(strict_types=1);

// The webhook controller remembers delivery ids here: use a store shared by every web server
// (redis), not a per-host file cache. CACHE_STORE is Laravel 11's name, CACHE_DRIVER Laravel 8's.
return [
    'default' => env('CACHE_STORE', env('CACHE_DRIVER', 'redis')),
    'stores' => [
        'redis' => ['driver' => 'redis', 'connection' => 'cache', 'lock_connection' => 'default'],
        'file' => ['driver' => 'file', 'path' => storage_path('framework/cache/data')],
        'array' => ['driver' => 'array', 'serialize' => false],
    ],
    'prefix' => env('CACHE_PREFIX', 'service4ct_laravel_cache_'),
];
