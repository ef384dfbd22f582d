<?php

declare(strict_types=1);

/*
 * The application, in the classic Laravel layout (Laravel 8 to 10, and still supported by
 * Laravel 11 and 12): the container, the HTTP kernel (webhook route), the console kernel
 * (artisan, queue:work, horizon) and the exception handler.
 */

$app = new Illuminate\Foundation\Application(dirname(__DIR__));

// storage/ (logs, file cache) elsewhere, e.g. on a writable volume; Laravel 11+ reads the same variable
$storage = getenv('LARAVEL_STORAGE_PATH');
if (is_string($storage) && $storage !== '') {
    $app->useStoragePath($storage);
}

$app->singleton(Illuminate\Contracts\Http\Kernel::class, App\Http\Kernel::class);
$app->singleton(Illuminate\Contracts\Console\Kernel::class, App\Console\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, App\Exceptions\Handler::class);

return $app;
